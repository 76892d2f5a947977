"""Parameter sweeps: a base config, factors and replications, run on any executor, with every
finished point kept on disk as it completes.

A spec (TOML)::

    base = "base.toml"          # a config file (relative to the spec), or a [base] table
    replications = 3            # runs per point, each with its own seed
    seed = 2026                 # root of numpy.random.SeedSequence(seed).spawn(...)

    [factors]                   # config path -> values; the sweep is their product
    "pml.buffer_entries" = [128, 512, 2048]
    "pml.flush_policy" = ["xen", "kvm"]

Point i, replication r gets the seed of child ``i * replications + r`` of the root sequence, so
the same spec gives the same rows whatever the executor, the job count or the order in which
points finish. Each finished row is appended to the results file (one write, flushed and
synced) as it arrives; rerunning the same command resumes, running only the missing points.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import csv
import hashlib
import io
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import attrs
import numpy as np

from pmlsim.config import ConfigError, config_from_dict, parse_cell, read_toml
from pmlsim.results import Result
from pmlsim.sim import simulate

#: result columns taken from every run, in order (a dotted name reads a nested attribute)
METRICS = (
    "sim_time_ns",
    "guest_writes",
    "pml_entries_logged",
    "exits.pml_full",
    "exits.ept_violation",
    "exits.kick",
    "exits.pause",
    "guest_stall_ns",
    "guest_overhead",
    "flushes",
    "flushed_entries",
    "bitmap_staleness_mean_ns",
    "bitmap_staleness_max_ns",
    "kicks",
    "invepts",
    "syncs",
    "sync_latency_mean_ns",
    "dirty_pages_reported",
    "superpages_split",
    "ept_leaves_at_stop",
    "ept_leaves_after_recoalescing",
    "late_pages",
    "lost_pages",
    "verified",
    "migration.converged",
    "migration.stop_reason",
    "migration.migration_time_ns",
    "migration.downtime_ns",
    "migration.total_pages_sent",
    "migration.bytes_sent",
    "migration.rounds",
)
KEY_COLUMNS = ("spec_hash", "point", "replication", "seed")
TAIL_COLUMNS = ("wall_time_s", "error")


@attrs.frozen
class Point:
    """One run of the sweep: factor settings, replication number and seed."""

    index: int
    replication: int
    settings: tuple[tuple[str, Any], ...]
    seed: int


@attrs.frozen
class SweepSpec:
    base: dict[str, Any]
    factors: tuple[tuple[str, tuple[Any, ...]], ...]
    replications: int = 1
    seed: int = 0

    @property
    def spec_hash(self) -> str:
        """Identifies the spec: a results file from another spec is never resumed into."""
        canon = json.dumps(
            {"base": self.base, "factors": self.factors, "replications": self.replications, "seed": self.seed},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    @property
    def columns(self) -> tuple[str, ...]:
        return (*KEY_COLUMNS, *(path for path, _ in self.factors), *METRICS, *TAIL_COLUMNS)

    def points(self) -> list[Point]:
        combos = list(itertools.product(*(values for _, values in self.factors)))
        seeds = np.random.SeedSequence(self.seed).spawn(len(combos) * self.replications)
        paths = [path for path, _ in self.factors]
        return [
            Point(
                index=i,
                replication=r,
                settings=tuple(zip(paths, combo, strict=True)),
                seed=int(seeds[i * self.replications + r].generate_state(1, np.uint64)[0] >> np.uint64(1)),
            )
            for i, combo in enumerate(combos)
            for r in range(self.replications)
        ]

    def config_data(self, point: Point) -> dict[str, Any]:
        data = copy.deepcopy(self.base)
        for path, value in point.settings:
            node = data
            parts = path.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        data["seed"] = point.seed
        return data

    def validate(self) -> None:
        """Every point's config must build: unknown paths and bad values are named now."""
        for point in self.points()[:: self.replications]:
            try:
                config_from_dict(self.config_data(point))
            except ConfigError as exc:
                where = ", ".join(f"{p}={v!r}" for p, v in point.settings)
                raise ConfigError(exc.field, exc.value, f"{exc.allowed} (in the sweep point {where})") from exc


def load_spec(path: str | Path) -> SweepSpec:
    """Read a sweep spec; errors name the spec field."""
    p = Path(path)
    data = read_toml(p, "spec")
    unknown = set(data) - {"base", "factors", "replications", "seed"}
    if unknown:
        raise ConfigError(f"spec.{sorted(unknown)[0]}", "", "unknown; a spec has base, factors, replications, seed")
    base = data.get("base", {})
    if isinstance(base, str):
        base = read_toml(Path(base) if Path(base).is_absolute() else p.parent / base, "spec.base")
    if not isinstance(base, dict):
        raise ConfigError("spec.base", base, "must be a config file path or a [base] table")
    factors = data.get("factors", {})
    if not isinstance(factors, dict) or not factors:
        raise ConfigError("spec.factors", factors, "must be a table of config path = [values] with at least one")
    flat = []
    for path_, values in factors.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"factors.{path_}", values, "must be a non-empty list of values")
        flat.append((path_, tuple(values)))
    reps = data.get("replications", 1)
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ConfigError("spec.replications", reps, "must be an integer >= 1")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("spec.seed", seed, "must be an integer >= 0")
    spec = SweepSpec(base=base, factors=tuple(flat), replications=reps, seed=seed)
    spec.validate()
    return spec


# ---------------------------------------------------------------- one point
def _metric(result: Result, name: str) -> Any:
    if name.startswith("exits."):
        return result.exits.get(name.split(".", 1)[1], 0)
    if name.startswith("migration."):
        m = result.migration
        if m is None:
            return None
        field = name.split(".", 1)[1]
        return len(m.rounds) if field == "rounds" else getattr(m, field)
    return getattr(result, name)


def run_point(spec: SweepSpec, point: Point) -> dict[str, Any]:
    """Run one point and return its row; an error is recorded in the row, not raised."""
    row: dict[str, Any] = {"spec_hash": spec.spec_hash, "point": point.index, "replication": point.replication}
    row["seed"] = point.seed
    row.update(dict(point.settings))
    t0 = time.perf_counter()
    try:
        result = simulate(config_from_dict(spec.config_data(point)))
        row.update({name: _metric(result, name) for name in METRICS})
        row["error"] = ""
    except Exception as exc:  # a failing point is recorded, never fatal to the sweep
        row.update({name: None for name in METRICS})
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["wall_time_s"] = round(time.perf_counter() - t0, 6)
    return row


# ---------------------------------------------------------------- the results file
def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class ResultsFile:
    """Rows on disk: a CSV journal appended one whole line at a time (and synced), so that an
    interrupted sweep keeps every finished row. ``.parquet`` outputs are written from the
    journal when the sweep completes."""

    def __init__(self, path: str | Path, spec: SweepSpec):
        self.path = Path(path)
        self.spec = spec
        self.parquet = self.path.suffix.lower() == ".parquet"
        self.journal = self.path.with_name(self.path.name + ".journal.csv") if self.parquet else self.path
        self.rows: list[dict[str, str]] = []
        self._load()

    def _load(self) -> None:
        if not self.journal.exists():
            if self.parquet and self.path.exists():
                self._load_parquet()
            return
        text = self.journal.read_text()
        if text and not text.endswith("\n"):
            # a line cut short by an interruption: drop it, keep every whole row
            text = text[: text.rfind("\n") + 1]
            self.journal.write_text(text)
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            return
        if tuple(reader.fieldnames) != self.spec.columns:
            raise ConfigError(
                "--out", str(self.path), "holds results with other columns: it belongs to another sweep spec"
            )
        for row in reader:
            if row["spec_hash"] != self.spec.spec_hash:
                raise ConfigError(
                    "--out",
                    str(self.path),
                    f"holds results of another spec (hash {row['spec_hash']}, this spec {self.spec.spec_hash});"
                    " refusing to mix them: choose another --out",
                )
            self.rows.append(row)

    def _load_parquet(self) -> None:
        import pyarrow.parquet as pq

        table = pq.read_table(self.path)
        for row in table.to_pylist():
            if row.get("spec_hash") != self.spec.spec_hash:
                raise ConfigError("--out", str(self.path), "holds results of another spec; choose another --out")
            self.rows.append({k: _fmt(v) for k, v in row.items()})

    def done(self) -> set[tuple[int, int]]:
        return {(int(r["point"]), int(r["replication"])) for r in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        new = not self.journal.exists() or self.journal.stat().st_size == 0
        if new:
            writer.writerow(self.spec.columns)
        writer.writerow([_fmt(row.get(c)) for c in self.spec.columns])
        with self.journal.open("a", newline="") as fh:
            fh.write(buf.getvalue())  # one write per row: a row is on disk whole or not at all
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.append({c: _fmt(row.get(c)) for c in self.spec.columns})

    def finish(self) -> None:
        """All points done: rows sorted by point and replication, replaced atomically."""
        rows = sorted(self.rows, key=lambda r: (int(r["point"]), int(r["replication"])))
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            cols = {c: [parse_cell(r[c]) for r in rows] for c in self.spec.columns}
            tmp = self.path.with_name(self.path.name + ".tmp")
            pq.write_table(pa.table(cols), tmp)
            os.replace(tmp, self.path)
            self.journal.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.spec.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- progress
class Progress:
    """Points done, failures and ETA: a bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, already: int, stream: TextIO | None = None):
        self.total, self.done, self.failed = total, already, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._t0 = time.monotonic()
        self._started_with = already

    def update(self, row: dict[str, Any]) -> None:
        self.done += 1
        self.failed += bool(row.get("error"))
        ran = self.done - self._started_with
        rate = ran / max(time.monotonic() - self._t0, 1e-9)
        left = self.total - self.done
        eta = f"{left / rate:,.0f} s" if rate > 0 and left else "0 s"
        msg = f"{self.done}/{self.total} points, {self.failed} failed, ETA {eta}"
        if self.tty:
            width = 30
            filled = math.floor(width * self.done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {msg}")
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"sweep: {msg}\n")
        self.stream.flush()


# ---------------------------------------------------------------- the sweep
def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    executor: cf.Executor | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, str]]:
    """Run every point not yet in ``out`` on ``executor`` (inline when None); returns all rows.

    Interrupting it (KeyboardInterrupt) keeps every finished row; rerun to resume."""
    results = ResultsFile(out, spec)
    done = results.done()
    todo = [p for p in spec.points() if (p.index, p.replication) not in done]
    if executor is None:
        for point in todo:
            row = run_point(spec, point)
            results.append(row)
            if progress:
                progress(row)
    else:
        futures = [executor.submit(run_point, spec, p) for p in todo]
        try:
            for fut in cf.as_completed(futures):
                row = fut.result()
                results.append(row)
                if progress:
                    progress(row)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    results.finish()
    return sorted(results.rows, key=lambda r: (int(r["point"]), int(r["replication"])))


def make_executor(kind: str, jobs: int, scheduler: str | None) -> tuple[cf.Executor | None, Callable[[], None]]:
    """An executor for ``--executor`` and a function that shuts it down."""
    if kind == "local":
        if jobs <= 1:
            return None, lambda: None
        pool = cf.ProcessPoolExecutor(max_workers=jobs)
        return pool, lambda: pool.shutdown(wait=False, cancel_futures=True)
    if kind != "dask":
        raise ConfigError("--executor", kind, "must be local or dask")
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ConfigError("--executor", "dask", "needs dask.distributed: pip install 'dask[distributed]'") from exc
    if scheduler:
        try:
            client = Client(scheduler, timeout="5s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError("--scheduler", scheduler, f"is not reachable ({type(exc).__name__}: {exc})") from exc

        def close() -> None:
            client.close()

        return client.get_executor(), close
    cluster = LocalCluster(n_workers=max(jobs, 1), threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)

    def close_local() -> None:
        client.close()
        cluster.close()

    return client.get_executor(), close_local


def rows_without_timing(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the wall-time column dropped: what must match across executors."""
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]
