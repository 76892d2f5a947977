"""What the guest writes: scripted writes (for race tests) and statistical generators.

A generator produces, per vCPU, writes in *guest run time*: the vCPU's clock advances only while
it runs, so an exit delays its later writes instead of dropping them. A script gives absolute
simulation times: a scripted write whose vCPU is stopped at that time is issued when the vCPU
resumes, and later scripted writes keep their times.

Each vCPU draws from its own ``numpy.random.Generator`` spawned from
``SeedSequence(seed)``; writes are generated in fixed-size chunks, so what a vCPU writes never
depends on how the engine consumes it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from pmlsim.config import PAGE_SIZE, ConfigError, GuestConfig, SimConfig, WorkloadConfig
from pmlsim.ept import page_table_pages

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
    """Poisson writes (exponential gaps) at ``rate`` per second over a page region."""

    def __init__(self, rng: np.random.Generator, rate_per_s: float, region: tuple[int, int], w: WorkloadConfig):
        self.rng = rng
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
        rng = self.rng
        gaps = rng.exponential(self.mean_gap_ns, CHUNK)
        t = self._t + np.cumsum(gaps)
        self._t = float(t[-1])
        times = t.astype(np.int64)  # truncation: the floor of these positive times
        return times, self.start + self._pages(CHUNK)

    def _pages(self, n: int) -> np.ndarray:
        kind, rng, pages = self.w.kind, self.rng, self.pages
        if kind == "uniform":
            return rng.integers(0, pages, n, dtype=np.int64)
        if kind == "hotcold":
            hot = max(1, int(pages * self.w.hot_fraction))
            is_hot = rng.random(n) < self.w.hot_write_fraction
            hot_pages = rng.integers(0, hot, n, dtype=np.int64)
            cold_pages = hot + rng.integers(0, max(pages - hot, 1), n, dtype=np.int64) if pages > hot else hot_pages
            return np.where(is_hot, hot_pages, cold_pages)
        if kind == "zipf":
            # continuous inverse-CDF approximation of a Zipf law over ranks 1..pages
            s, u = self.w.zipf_s, rng.random(n)
            if abs(s - 1.0) < 1e-9:
                rank = np.exp(u * math.log(pages + 1.0))
            else:
                rank = ((pages + 1.0) ** (1.0 - s) - 1.0) * u + 1.0
                rank = rank ** (1.0 / (1.0 - s))
            r = np.clip(np.floor(rank).astype(np.int64) - 1, 0, pages - 1)
            return (r * self._stride) % pages
        # sequential sweep, wrapping at the end of the region (QEMU's migration-test pattern)
        out = (self._seq + np.arange(n, dtype=np.int64)) % pages
        self._seq = int((self._seq + n) % pages)
        return out


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
    base = ept.leaf_base[ept.n_pages :]
    last = base + ept.leaf_pages[ept.n_pages :] - 1
    return bool(np.all(np.searchsorted(starts, base, "right") == np.searchsorted(starts, last, "right")))
