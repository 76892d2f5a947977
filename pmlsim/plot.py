"""Figures from sweep results: a metric against a factor, one line per hue, one panel per facet,
mean over replications with error bars (one standard deviation)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from pmlsim.config import ConfigError, parse_cell


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a sweep results file (.csv or .parquet), values parsed to numbers where they are."""
    p = Path(path)
    if not p.exists():
        raise ConfigError("results", str(p), "file not found")
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    with p.open(newline="") as fh:
        return [{k: parse_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _check_column(rows: list[dict[str, Any]], name: str | None, option: str) -> None:
    if name is not None and rows and name not in rows[0]:
        cols = ", ".join(sorted(rows[0]))
        raise ConfigError(option, name, f"is not a column of the results; columns: {cols}")


def summarize(rows, x: str, y: str, hue: str | None = None, facet: str | None = None):
    """{facet: {hue: [(x, mean y, sd y, n)]}} over the rows without an error."""
    groups: dict[Any, dict[Any, dict[Any, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        if r.get("error") or r.get(y) is None or r.get(x) is None:
            continue
        groups[r.get(facet) if facet else None][r.get(hue) if hue else None][r[x]].append(float(r[y]))
    out: dict[Any, dict[Any, list[tuple[Any, float, float, int]]]] = {}
    for f, hues in groups.items():
        out[f] = {}
        for h, xs in hues.items():
            series = []
            for xv in sorted(xs, key=lambda v: (isinstance(v, str), v)):
                ys = xs[xv]
                mean = sum(ys) / len(ys)
                sd = math.sqrt(sum((v - mean) ** 2 for v in ys) / (len(ys) - 1)) if len(ys) > 1 else 0.0
                series.append((xv, mean, sd, len(ys)))
            out[f][h] = series
    return out


def _log_helps(values: list[float]) -> bool:
    pos = [v for v in values if isinstance(v, int | float) and v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) >= 100


def plot(
    results: str | Path,
    x: str,
    y: str,
    out: str | Path,
    hue: str | None = None,
    facet: str | None = None,
    title: str | None = None,
) -> Path:
    """Draw ``y`` against ``x`` (log axes where values span two decades or more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(results)
    for name, option in ((x, "--x"), (y, "--y"), (hue, "--hue"), (facet, "--facet")):
        _check_column(rows, name, option)
    data = summarize(rows, x, y, hue, facet)
    if not data:
        raise ConfigError("--y", y, "has no values in the results (every row failed or is empty)")
    facets = sorted(data, key=lambda v: (v is None, str(v)))
    fig, axes = plt.subplots(1, len(facets), figsize=(5.2 * len(facets), 4), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], facets, strict=True):
        xs_all, ys_all = [], []
        for h in sorted(data[f], key=lambda v: (v is None, str(v))):
            series = data[f][h]
            xs = [s[0] for s in series]
            ax.errorbar(
                xs,
                [s[1] for s in series],
                yerr=[s[2] for s in series],
                marker="o",
                capsize=3,
                label=f"{hue}={h}" if hue else None,
            )
            xs_all += xs
            ys_all += [s[1] for s in series]
        if _log_helps(xs_all):
            ax.set_xscale("log", base=2 if all(isinstance(v, int) for v in xs_all) else 10)
        if _log_helps(ys_all):
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.grid(True, which="both", alpha=0.3)
        if facet:
            ax.set_title(f"{facet}={f}")
        if hue:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(y)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
