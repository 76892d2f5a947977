"""Tuning: minimise a metric subject to a constraint over the numeric factors of a sweep spec
(for instance PML buffer size x flush interval): the spec's grid first, then rounds of
refinement around the best point. Every round is a sweep, kept (and resumable) on disk."""

from __future__ import annotations

import concurrent.futures as cf
import math
import operator
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import attrs

from pmlsim.config import ConfigError, parse_cell
from pmlsim.sweep import METRICS, SweepSpec, run_sweep

OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


@attrs.frozen
class Constraint:
    metric: str
    op: str
    value: float

    def ok(self, v: float) -> bool:
        return OPS[self.op](v, self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def parse_constraint(text: str) -> Constraint:
    m = re.fullmatch(r"\s*([\w.]+)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+)\s*", text)
    if not m:
        raise ConfigError("--subject-to", text, 'must look like "metric <= number" (also >=, <, >, ==)')
    if m.group(1) not in METRICS:
        raise ConfigError("--subject-to", m.group(1), f"is not a metric; metrics: {', '.join(METRICS)}")
    try:
        return Constraint(m.group(1), m.group(2), float(m.group(3)))
    except ValueError as exc:
        raise ConfigError("--subject-to", text, "the bound must be a number") from exc


@attrs.frozen
class Candidate:
    settings: tuple[tuple[str, Any], ...]
    objective: float
    constrained: float | None
    feasible: bool
    runs: int


def _aggregate(rows, objective: str, constraint: Constraint | None, paths) -> list[Candidate]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["error"] or r[objective] in ("", None):
            continue
        groups[tuple((p, parse_cell(r[p])) for p in paths)].append(r)
    out = []
    for settings, rs in groups.items():
        obj = sum(float(r[objective]) for r in rs) / len(rs)
        con = None
        if constraint is not None:
            vals = [float(r[constraint.metric]) for r in rs if r[constraint.metric] not in ("", None)]
            con = sum(vals) / len(vals) if vals else None
        feasible = constraint is None or (con is not None and constraint.ok(con))
        out.append(Candidate(settings, obj, con, feasible, len(rs)))
    return out


def _refine(values: list[Any], best: Any) -> list[Any]:
    """The best value and midpoints towards its neighbours (geometric for positive numbers)."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [best]
    vals = sorted(set(values))
    i = vals.index(best)
    out = {best}
    for j in (i - 1, i + 1):
        if 0 <= j < len(vals):
            a, b = vals[j], best
            mid = math.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2
            if all(isinstance(v, int) for v in values):
                mid = round(mid)
            out.add(mid)
    return sorted(out)


def frontier(cands: list[Candidate], constraint: Constraint | None) -> list[Candidate]:
    """Points no other point beats on both the objective and the constrained metric."""
    if constraint is None:
        return sorted(cands, key=lambda c: c.objective)[:1]
    sign = -1.0 if constraint.op in (">=", ">") else 1.0  # smaller is better for <=, <, ==
    pts = [c for c in cands if c.constrained is not None]
    keep = [
        c
        for c in pts
        if not any(
            (o.objective <= c.objective and sign * o.constrained <= sign * c.constrained)
            and (o.objective < c.objective or sign * o.constrained < sign * c.constrained)
            for o in pts
        )
    ]
    return sorted(keep, key=lambda c: c.objective)


def tune(
    spec: SweepSpec,
    minimize: str,
    constraint: Constraint | None,
    out_dir: str | Path,
    rounds: int = 2,
    executor: cf.Executor | None = None,
    progress=None,
) -> tuple[Candidate | None, list[Candidate], list[Candidate]]:
    """Grid, then ``rounds`` refinements. Returns (best feasible point, frontier, all points)."""
    if minimize not in METRICS:
        raise ConfigError("--minimize", minimize, f"is not a metric; metrics: {', '.join(METRICS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [p for p, _ in spec.factors]
    evaluated: dict[tuple, Candidate] = {}
    current = spec
    best = None
    for k in range(rounds + 1):
        rows = run_sweep(current, out_dir / f"round{k}.csv", executor, progress)
        for c in _aggregate(rows, minimize, constraint, paths):
            evaluated[c.settings] = c
        feasible = [c for c in evaluated.values() if c.feasible]
        best = min(feasible, key=lambda c: c.objective) if feasible else None
        if best is None or k == rounds:
            break
        values = {p: sorted({dict(s)[p] for s in evaluated}, key=lambda v: (isinstance(v, str), v)) for p in paths}
        refined = tuple((p, tuple(_refine(values[p], dict(best.settings)[p]))) for p in paths)
        current = attrs.evolve(spec, factors=refined)
    cands = list(evaluated.values())
    return best, frontier(cands, constraint), cands
