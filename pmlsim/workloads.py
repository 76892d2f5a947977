"""What the guest writes: scripted writes (for race tests) and statistical generators.

A generator produces, per vCPU, writes in *guest run time*: the vCPU's clock advances only while
it runs, so an exit delays its later writes instead of dropping them. A script gives absolute
simulation times: a scripted write whose vCPU is stopped at that time is issued when the vCPU
resumes, and later scripted writes keep their times.

Each vCPU draws from its own ``numpy.random.Generator`` (PCG64) spawned from
``SeedSequence(seed)``, its numbers made by pmlsim's compiled copy of it (:mod:`pmlsim.pcg64`:
numpy's numbers, faster); writes are generated in fixed-size chunks, so what a vCPU writes never
depends on how the engine consumes it.
"""

from __future__ import annotations

import csv
import json
import math
import threading
from collections import deque
from pathlib import Path

import numpy as np
from numba import njit

from pmlsim import pcg64
from pmlsim.config import PAGE_SIZE, ConfigError, GuestConfig, SimConfig, WorkloadConfig
from pmlsim.ept import page_table_pages
from pmlsim.theory import DIRTY_RATE_KEYS, concave_majorant, dirty_curve_knots

CHUNK = 8192


class WriteStream:
    """The writes of one vCPU, produced chunk by chunk: ``(time_ns, gfn)`` arrays."""

    #: True: times are guest run time (shifted by stalls); False: absolute simulation times
    guest_time = True

    def next_chunk(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ScriptStream(WriteStream):
    guest_time = False

    def __init__(self, times: np.ndarray, gfns: np.ndarray):
        self._chunk = (times.astype(np.int64), gfns.astype(np.int64))
        self._done = False

    def next_chunk(self):
        if self._done:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._done = True
        return self._chunk


class RandomStream(WriteStream):
    """Poisson writes (exponential gaps) at ``rate`` per second over a page region.

    The draws are ``rng``'s, made by the compiled PCG64 of :mod:`pmlsim.pcg64` (the same
    numbers as numpy's, faster): the stream takes a copy of ``rng``'s state and advances that."""

    def __init__(self, rng: np.random.Generator, rate_per_s: float, region: tuple[int, int], w: WorkloadConfig):
        self._st = pcg64.state_of(rng)
        self.mean_gap_ns = 1e9 / rate_per_s if rate_per_s > 0 else math.inf
        self.start, self.pages = region[0], region[1] - region[0]
        self.w = w
        self._t = 0.0
        self._seq = 0
        if w.kind == "zipf":
            # rank r -> page (r * stride) mod pages: a fixed scatter of hot ranks over the region
            self._stride = _coprime_stride(self.pages)

    def next_chunk(self):
        if math.isinf(self.mean_gap_ns):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)  # an idle vCPU writes nothing
        # numpy's exponential(scale) is scale times its standard exponential, draw for draw (its
        # random_exponential), summed in order as t0 + cumsum(...)
        times, self._t = pcg64.exponential_times(self._st, CHUNK, self.mean_gap_ns, self._t)
        return times, self._pages(CHUNK)

    def _pages(self, n: int) -> np.ndarray:
        """The next ``n`` writes' GFNs (numpy's ``integers(a, b)`` is ``a + integers(0, b - a)``,
        draw for draw: the region's start is added as they are drawn)."""
        kind, st, pages, start = self.w.kind, self._st, self.pages, self.start
        if kind == "uniform":
            return pcg64.integers(st, start, start + pages, n)
        if kind == "hotcold":
            # numpy: u = random(n), hot = integers(start, start + hot, n), then (unless every
            # page is hot) cold = integers(start + hot, start + pages, n), where(u < f, hot, cold)
            hot = max(1, int(pages * self.w.hot_fraction))
            return _hot_or_cold(st, n, self.w.hot_write_fraction, start, hot, pages)
        if kind == "zipf":
            # continuous inverse-CDF approximation of a Zipf law over ranks 1..pages
            s, u = self.w.zipf_s, pcg64.random(st, n)
            if abs(s - 1.0) < 1e-9:
                rank = np.exp(u * math.log(pages + 1.0))
            else:
                rank = ((pages + 1.0) ** (1.0 - s) - 1.0) * u + 1.0
                rank = rank ** (1.0 / (1.0 - s))
            r = np.clip(np.floor(rank).astype(np.int64) - 1, 0, pages - 1)
            return start + (r * self._stride) % pages
        # sequential sweep, wrapping at the end of the region (QEMU's migration-test pattern)
        out = start + (self._seq + np.arange(n, dtype=np.int64)) % pages
        self._seq = int((self._seq + n) % pages)
        return out


@njit(cache=True, nogil=True)
def _hot_or_cold(st, n, hot_write_fraction, start, hot, pages):
    """``n`` hot/cold writes' pages drawn from PCG64 state ``st`` as numpy's ``random``,
    ``integers`` and ``where`` would, in one compiled call: a uniform draw per write, then a
    hot page per write, then (unless every page is hot) a cold page per write; a write takes
    its hot page when its uniform draw is below the hot fraction."""
    u = pcg64.random(st, n)
    out = pcg64.integers(st, start, start + hot, n)
    if pages <= hot:
        return out
    cold = pcg64.integers(st, start + hot, start + pages, n)
    for i in range(n):
        if u[i] >= hot_write_fraction:
            out[i] = cold[i]
    return out


class ChunkPrefetcher:
    """Draws the vCPUs' next chunks on a worker thread while the engine retires earlier ones.

    The compiled draws (:mod:`pmlsim.pcg64`) release the GIL, so drawing overlaps the compiled
    lanes on a second core. Each stream is drawn by one thread at a time, in order, up to
    ``depth`` chunks ahead: what every vCPU writes is unchanged (and so every result). When the
    engine needs a chunk nobody is drawing yet, it draws it itself rather than wait (drawing
    hot/cold writes can take longer than retiring them: a 32 GiB variant of the end-to-end
    benchmark waited 11 s of 36 s for chunks). :meth:`close` stops the thread; an error while drawing is
    raised by :meth:`next_chunk`.

    ``join``: each chunk handed out is that many of the stream's chunks, drawn in turn and joined
    (fewer at its end), so that the engine can take longer batches; the writes are the same."""

    def __init__(self, streams: list[WriteStream], depth: int = 2, join: int = 1):
        self.streams = streams
        self.depth = depth
        self.join = join
        self._ready: list[deque] = [deque() for _ in streams]
        self._ended = [False] * len(streams)  # the stream returned its empty chunk
        self._busy = [False] * len(streams)  # a thread is drawing the stream's next chunk
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._draw, name="pmlsim-writes", daemon=True)
        self._thread.start()

    def _wanted(self) -> int:
        """The stream with the fewest chunks ready (lowest index on ties) that nobody is drawing,
        or -1."""
        best, fewest = -1, self.depth
        for v, r in enumerate(self._ready):
            if len(r) < fewest and not self._ended[v] and not self._busy[v]:
                best, fewest = v, len(r)
        return best

    def _draw_one(self, v: int) -> None:
        """Draw stream ``v``'s next chunk (``join`` of the stream's), with the lock held on entry
        and on return."""
        self._busy[v] = True
        self._cond.release()  # outside the lock: the engine (or the worker) goes on
        try:
            parts = [self.streams[v].next_chunk()]
            while len(parts) < self.join and len(parts[-1][0]):
                parts.append(self.streams[v].next_chunk())
            end = parts.pop() if len(parts[-1][0]) == 0 else None  # the stream's empty last chunk
            if len(parts) > 1:  # (joined outside the lock too)
                parts = [(np.concatenate([t for t, _ in parts]), np.concatenate([g for _, g in parts]))]
        finally:
            self._cond.acquire()
            self._busy[v] = False
        self._ready[v].extend(parts)
        if end is not None:
            self._ready[v].append(end)
        self._ended[v] = end is not None
        self._cond.notify_all()

    def _draw(self) -> None:
        cond = self._cond
        try:
            with cond:
                while True:
                    while not self._closed and (v := self._wanted()) < 0:
                        cond.wait()
                    if self._closed:
                        return
                    self._draw_one(v)
        except BaseException as exc:  # handed to the engine, which raises it
            with cond:
                self._error = exc
                cond.notify_all()

    def next_chunk(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        """vCPU ``v``'s next chunk (drawn here if nobody is drawing it yet)."""
        with self._cond:
            while not self._ready[v]:
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise RuntimeError("the write streams are closed")
                if not self._busy[v] and not self._ended[v]:
                    self._draw_one(v)
                else:
                    self._cond.wait()
            chunk = self._ready[v].popleft()
            self._cond.notify_all()
        return chunk

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


class CurveStream(WriteStream):
    """The writes of one vCPU under ``kind = "curve"``: its pages of a set of cyclic sweeps.

    A sweep writes its pages in turn, one every period/pages, so each page once per period.
    Each sweep is given as (period_ns, phases_ns, gfns): page ``gfns[i]`` is written at
    ``phases_ns[i] + k * period_ns`` (k = 0, 1, ...), phases sorted, in [0, period). Chunks
    cover fixed windows of guest time sized for about CHUNK writes."""

    def __init__(self, sweeps: list[tuple[int, np.ndarray, np.ndarray]]):
        self.sweeps = [s for s in sweeps if len(s[1])]
        rate = sum(len(ph) / period for period, ph, _ in self.sweeps)  # writes per ns
        self.window_ns = max(1, math.ceil(CHUNK / rate)) if rate else 0
        self._t = 0

    def next_chunk(self):
        if not self.sweeps:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)  # this vCPU has no pages to write
        while True:
            a, b = self._t, self._t + self.window_ns
            self._t = b
            parts = [_sweep_window(period, ph, g, a, b) for period, ph, g in self.sweeps]
            times = np.concatenate([p[0] for p in parts])
            if len(times):
                gfns = np.concatenate([p[1] for p in parts])
                order = np.argsort(times, kind="stable")
                return times[order], gfns[order]


def _sweep_window(period: int, ph: np.ndarray, g: np.ndarray, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """The writes of one sweep in guest time [a, b), in time order."""
    k0, k1 = a // period, (b - 1) // period
    first = int(np.searchsorted(ph, a - k0 * period))
    if k0 == k1:
        last = int(np.searchsorted(ph, b - k0 * period))
        return ph[first:last] + k0 * period, g[first:last]
    last = int(np.searchsorted(ph, b - k1 * period))
    middle = np.arange(k0 + 1, k1, dtype=np.int64)[:, None] * period
    times = [ph[first:] + k0 * period, (ph[None, :] + middle).ravel(), ph[:last] + k1 * period]
    gfns = [g[first:], np.tile(g, len(middle)), g[:last]]
    return np.concatenate(times), np.concatenate(gfns)


#: the calc-dirty-rate keys and the workload settings that give them inline
CURVE_FIELDS = {
    "periods": "workload.curve_periods_ms",
    "n-dirty-pages": "workload.curve_dirty_pages",
    "n-sampled-pages": "workload.curve_sampled_pages",
    "n-total-pages": "workload.curve_total_pages",
    "n-zero-pages": "workload.curve_zero_pages",
}


def curve_data(config: SimConfig) -> dict:
    """The dirty-rate curve of a ``kind = "curve"`` workload in QEMU's calc-dirty-rate format
    (``pmlsim.theory.DIRTY_RATE_KEYS``), from ``workload.path`` or the ``curve_*`` settings,
    validated. Unset counts default as documented: total = the guest's pages, sampled = total."""
    w = config.workload
    inline = [f for f in CURVE_FIELDS.values() if getattr(w, f.split(".")[1]) not in (None, 0)]
    if w.path is not None:
        if inline:
            raise ConfigError(inline[0], getattr(w, inline[0].split(".")[1]), "cannot be set with workload.path")
        data = read_curve_json(w.path)
        names = {k: f"{w.path}: {k}" for k in DIRTY_RATE_KEYS}
    else:
        if w.curve_periods_ms is None or w.curve_dirty_pages is None:
            missing = "workload.curve_periods_ms" if w.curve_periods_ms is None else "workload.curve_dirty_pages"
            raise ConfigError(
                missing, None, "workload.kind='curve' needs workload.path (a calc-dirty-rate JSON) or the curve inline"
            )
        total = w.curve_total_pages if w.curve_total_pages is not None else config.guest.pages
        data = {
            "page-size": PAGE_SIZE,
            "periods": list(w.curve_periods_ms),
            "n-dirty-pages": list(w.curve_dirty_pages),
            "n-sampled-pages": w.curve_sampled_pages if w.curve_sampled_pages is not None else total,
            "n-total-pages": total,
            "n-zero-pages": w.curve_zero_pages,
        }
        names = {"page-size": "page-size", **CURVE_FIELDS}
    _check_curve(data, names)
    return data


def _check_curve(data: dict, names: dict[str, str]) -> None:
    periods, dirty = data["periods"], data["n-dirty-pages"]
    for key in ("periods", "n-dirty-pages"):
        v = data[key]
        if not isinstance(v, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in v
        ):
            raise ConfigError(names[key], v, "must be a list of finite numbers >= 0")
    for key in ("n-sampled-pages", "n-total-pages", "n-zero-pages", "page-size"):
        if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 0:
            raise ConfigError(names[key], data[key], "must be an integer >= 0")
    if data["page-size"] != PAGE_SIZE:
        raise ConfigError(names["page-size"], data["page-size"], f"must be {PAGE_SIZE}: pmlsim models 4 KiB pages")
    if len(periods) < 2:
        raise ConfigError(
            names["periods"], periods, "must have at least 2 points (D(t) is extrapolated from the first two)"
        )
    if len(dirty) != len(periods):
        raise ConfigError(names["n-dirty-pages"], dirty, f"must have one count per period ({len(periods)})")
    total, sampled, zero = data["n-total-pages"], data["n-sampled-pages"], data["n-zero-pages"]
    if total < 1:
        raise ConfigError(names["n-total-pages"], total, "must be in [1, inf]")
    if not 1 <= sampled <= total:
        raise ConfigError(names["n-sampled-pages"], sampled, f"must be in [1, {total}] (the total pages)")
    if zero > sampled:
        raise ConfigError(names["n-zero-pages"], zero, f"must be in [0, {sampled}] (the sampled pages)")
    for i in range(len(periods)):
        if periods[i] <= 0 or (i and periods[i] <= periods[i - 1]):
            low = f"> {periods[i - 1]}, the period before it" if i else "> 0"
            raise ConfigError(f"{names['periods']}[{i}]", periods[i], f"must be {low}: periods increase")
        if i and dirty[i] < dirty[i - 1]:
            raise ConfigError(
                f"{names['n-dirty-pages']}[{i}]", dirty[i],
                f"must be >= {dirty[i - 1]}, the count before it: distinct pages since a clean start never decrease",
            )  # fmt: skip
        if dirty[i] > sampled - zero:
            raise ConfigError(
                f"{names['n-dirty-pages']}[{i}]", dirty[i],
                f"must be in [0, {sampled - zero}] (the {sampled} sampled pages less the {zero} zero pages)",
            )  # fmt: skip


def read_curve_json(path: str | Path) -> dict:
    """A calc-dirty-rate result as JSON: what ``query-dirty-rate`` returns in page-sampling
    mode (QEMU >= 8.1), e.g. as ``scripts/predict_migration.py calc-dirty-rate`` prints it."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise ConfigError("workload.path", str(p), f"cannot be read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError("workload.path", str(p), f"is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError("workload.path", str(p), "must hold a JSON object (query-dirty-rate's result)")
    if "return" in data and isinstance(data["return"], dict):
        data = data["return"]  # a raw QMP reply
    missing = [k for k in DIRTY_RATE_KEYS if k not in data]
    if missing:
        raise ConfigError(
            f"{p}: {missing[0]}", None, f"is missing: the file needs {', '.join(DIRTY_RATE_KEYS)} (page-sampling mode)"
        )
    return {k: data[k] for k in DIRTY_RATE_KEYS}


def guest_curve(config: SimConfig) -> dict:
    """The curve as this guest's workload realises it: the calc-dirty-rate data rescaled to the
    pages the workload writes (guest memory less the guest page tables when
    ``tracking.guest_pt_walks``), so that ``pmlsim.theory.predict_migration`` runs on the same
    curve as the simulation."""
    data = dict(curve_data(config))
    data["n-total-pages"] = _writable_pages(config)
    return data


def _writable_pages(config: SimConfig) -> int:
    guest = config.guest
    return page_table_pages(guest.pages)[0] if config.tracking.guest_pt_walks else guest.pages


#: a curve's jump at t = 0 (pages dirtied "at once") is a sweep of this fraction of the first period
HOT_SWEEP_FRACTION = 0.1


def curve_sweeps(config: SimConfig) -> list[tuple[float, float]]:
    """The sweeps that realise the curve: (period in ms, pages before rounding), shortest period
    first.

    The workload's D(t) is the concave majorant of the predictor's curve (equal to it when that
    is concave). With knots t_j and slopes s_j after them (s = 0 after the last), a sweep of
    period t_j over t_j (s_(j-1) - s_j) pages contributes pages x min(t/t_j, 1) to any window of
    length t, and the sum is D(t) - D(0). D(0) > 0 (a jump) is a sweep of D(0) pages with
    period HOT_SWEEP_FRACTION x the first measured period."""
    data = guest_curve(config)
    knots = concave_majorant(dirty_curve_knots(data))
    out = []
    if knots[0][1] > 0:
        out.append((HOT_SWEEP_FRACTION * data["periods"][0], knots[0][1]))
    for j in range(1, len(knots)):
        (ta, da), (tb, db) = knots[j - 1], knots[j]
        before = (db - da) / (tb - ta)
        after = (knots[j + 1][1] - db) / (knots[j + 1][0] - tb) if j + 1 < len(knots) else 0.0
        out.append((tb, tb * (before - after)))
    return out


def curve_streams(config: SimConfig) -> list[WriteStream]:
    """One :class:`CurveStream` per vCPU: the sweeps of :func:`curve_sweeps` over a fixed random
    permutation of the writable pages (seeded by ``seed``), each sweep's pages evenly spaced in
    phase with a random offset, so that any window of t ms holds D(t) distinct pages to within
    one page per sweep. ``partitioned``: a page belongs to the vCPU whose slice holds it;
    ``shared``: pages go to the vCPUs in turn along the permutation."""
    guest, w = config.guest, config.workload
    n = _writable_pages(config)
    sweeps = curve_sweeps(config)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(config.seed)))
    perm = rng.permutation(n).astype(np.int64)
    # whole pages, rounded cumulatively so that the total is D's ceiling rounded
    ends = np.minimum(np.maximum.accumulate(np.round(np.cumsum([m for _, m in sweeps]))).astype(np.int64), n)
    if w.sharing == "partitioned":
        starts = np.array([lo for lo, _ in regions(guest, "partitioned", n)], dtype=np.int64)
        owner = np.searchsorted(starts, perm, side="right") - 1
    else:
        owner = np.arange(n, dtype=np.int64) % guest.vcpus
    per_vcpu: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in range(guest.vcpus)]
    lo = 0
    for (period_ms, _), hi in zip(sweeps, ends, strict=True):
        pages, own, m = perm[lo:hi], owner[lo:hi], int(hi - lo)
        lo = int(hi)
        if m == 0:
            continue
        period = max(1, round(period_ms * 1e6))
        phases = np.floor((np.arange(m) + rng.random()) * (period / m)).astype(np.int64)
        phases = np.minimum(phases, period - 1)
        for v in range(guest.vcpus):
            mine = own == v
            per_vcpu[v].append((period, phases[mine], pages[mine]))
    return [CurveStream(s) for s in per_vcpu]


def _coprime_stride(n: int) -> int:
    s = max(1, int(n * 0.6180339887)) | 1
    while math.gcd(s, n) != 1:
        s += 2
    return s


def regions(guest: GuestConfig, sharing: str, end: int | None = None) -> list[tuple[int, int]]:
    """Each vCPU's pages; ``end``: the first page not to use (the guest page tables)."""
    n, v = (guest.pages if end is None else end), guest.vcpus
    if sharing == "shared":
        return [(0, n)] * v
    return [(i * n // v, max((i + 1) * n // v, i * n // v + 1)) for i in range(v)]


def validate_script(writes, guest: GuestConfig, source: str, lines: list[int] | None = None) -> None:
    limit = guest.memory_mib * (1 << 20)
    for i, (t, v, gpa) in enumerate(writes):
        where = f"{source} line {lines[i]}" if lines else f"{source}[{i}]"
        if t < 0:
            raise ConfigError(f"{where}.time_ns", t, "must be >= 0")
        if not 0 <= v < guest.vcpus:
            raise ConfigError(f"{where}.vcpu", v, f"must be in [0, {guest.vcpus - 1}] (guest.vcpus={guest.vcpus})")
        if not 0 <= gpa < limit:
            raise ConfigError(f"{where}.gpa", hex(gpa), f"must be in [0, {hex(limit - 1)}] (guest memory)")


def read_script_csv(path: str | Path, guest: GuestConfig) -> list[tuple[int, int, int]]:
    """Parse a CSV with header ``time_ns,vcpu,gpa`` (decimal or 0x-hex numbers)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError("workload.path", str(p), f"cannot be read ({exc.strerror})") from exc
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip() for c in rows[0]] != ["time_ns", "vcpu", "gpa"]:
        raise ConfigError(f"{p} line 1", rows[0] if rows else "", "header must be time_ns,vcpu,gpa")
    out, lines = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise ConfigError(f"{p} line {lineno}", ",".join(row), "must have 3 fields: time_ns,vcpu,gpa")
        try:
            t, v, g = (int(c.strip(), 0) for c in row)
        except ValueError as exc:
            raise ConfigError(f"{p} line {lineno}", ",".join(row), "fields must be decimal or 0x-hex integers") from exc
        out.append((t, v, g))
        lines.append(lineno)
    validate_script(out, guest, str(p), lines)
    return out


def make_streams(config: SimConfig) -> list[WriteStream]:
    """One write stream per vCPU."""
    w, guest = config.workload, config.guest
    end = page_table_pages(guest.pages)[0] if config.tracking.guest_pt_walks else None
    if w.kind == "script":
        writes = list(w.script) if w.script is not None else read_script_csv(w.path, guest)
        arr = np.array(writes, dtype=np.int64).reshape(-1, 3)
        if end is not None and len(arr) and (arr[:, 2] // PAGE_SIZE >= end).any():
            i = int(np.argmax(arr[:, 2] // PAGE_SIZE >= end))
            raise ConfigError(
                f"workload.script[{i}].gpa", hex(int(arr[i, 2])),
                f"is in the guest page tables (GFN {end:#x} up) used by tracking.guest_pt_walks",
            )  # fmt: skip
        streams: list[WriteStream] = []
        for v in range(guest.vcpus):
            mine = arr[arr[:, 1] == v]
            order = np.argsort(mine[:, 0], kind="stable")
            streams.append(ScriptStream(mine[order, 0], mine[order, 2] // PAGE_SIZE))
        return streams
    if w.kind == "curve":
        return curve_streams(config)
    seeds = np.random.SeedSequence(config.seed).spawn(guest.vcpus)
    regs = regions(guest, w.sharing, end)
    return [
        RandomStream(np.random.Generator(np.random.PCG64(s)), w.writes_per_s_per_vcpu, regs[v], w)
        for v, s in enumerate(seeds)
    ]


def independent_lanes(config: SimConfig, ept) -> bool:
    """True when no EPT leaf can ever be written by two vCPUs: generated writes over partitioned
    regions with no superpage straddling two of them (or a single vCPU)."""
    w, guest = config.workload, config.guest
    if w.kind == "script":
        return False
    if guest.vcpus == 1:
        return True
    if w.sharing != "partitioned":
        return False
    starts = np.array([lo for lo, _ in regions(guest, "partitioned")], dtype=np.int64)
    base = ept.sp_base
    last = base + ept.sp_size - 1
    return bool(np.all(np.searchsorted(starts, base, "right") == np.searchsorted(starts, last, "right")))
