"""Closed forms the simulator is validated against (tests/validation, docs/validation.md)."""

from __future__ import annotations

import itertools
import math

import attrs


def occupancy_mean(n_pages: int, writes: int) -> float:
    """Expected distinct pages after ``writes`` uniform writes over ``n_pages``: N(1-(1-1/N)^k)."""
    return n_pages * (1.0 - (1.0 - 1.0 / n_pages) ** writes)


def occupancy_var(n_pages: int, writes: int) -> float:
    """Variance of the number of distinct pages (occupancy problem).

    With X = pages never written, E[X] = N q1 and E[X(X-1)] = N(N-1) q2, where
    q1 = (1-1/N)^k and q2 = (1-2/N)^k; Var(D) = Var(X) = N(N-1) q2 + N q1 - N^2 q1^2."""
    n, k = n_pages, writes
    q1 = (1.0 - 1.0 / n) ** k
    q2 = (1.0 - 2.0 / n) ** k
    return max(n * (n - 1) * q2 + n * q1 - (n * q1) ** 2, 0.0)


def precopy_rounds(n_pages: int, write_rate: float, link_pages_per_s: float, rounds: int) -> list[float]:
    """Pages per pre-copy round under uniform writes: D(0) = N,
    D(i+1) = N (1 - exp(-w T(i) / N)) with T(i) = D(i) / B."""
    d = [float(n_pages)]
    for _ in range(rounds - 1):
        t = d[-1] / link_pages_per_s
        d.append(n_pages * (1.0 - math.exp(-write_rate * t / n_pages)))
    return d


def geometric_migration(mem_bytes: float, dirty_bytes_per_s: float, link_bytes_per_s: float, rounds: int):
    """Liu et al. (HPDC 2011) geometric model with a constant dirty rate D and link rate R:
    round i sends V λ^i (λ = D/R); total sent V (1-λ^(n+1))/(1-λ); the stop-and-copy after n
    pre-copy rounds sends V λ^n, a downtime of V λ^n / R. Returns (total_bytes, downtime_s)."""
    lam = dirty_bytes_per_s / link_bytes_per_s
    total = mem_bytes * (1 - lam ** (rounds + 1)) / (1 - lam) if lam != 1 else mem_bytes * (rounds + 1)
    return total, mem_bytes * lam**rounds / link_bytes_per_s


def precopy_scenario(ratio: float, rounds: int, memory_mib: int = 64, bandwidth_mbit_s: float = 1000.0, seed: int = 1):
    """The validation scenario for the pre-copy checks: one vCPU writing uniformly at ``ratio``
    times the link's page rate, Xen's pass-by-pass rule (exactly ``rounds`` pre-copy rounds, no
    early stop) and a Xen-style sync (pause and drain), so that each round sends exactly the
    pages the previous one let the guest dirty. Returns (config, pages, link pages per second)."""
    from pmlsim.config import GuestConfig, MigrationConfig, PmlConfig, SimConfig, WorkloadConfig

    link = bandwidth_mbit_s * 1e6 / (4096 * 8)  # pages per second with no page header
    config = SimConfig(
        seed=seed,
        duration_ms=8000,
        guest=GuestConfig(memory_mib=memory_mib, vcpus=1),
        pml=PmlConfig(flush_policy="xen"),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=ratio * link),
        migration=MigrationConfig(
            bandwidth_mbit_s=bandwidth_mbit_s,
            page_header_bytes=0,
            stop_rule="xen",
            xen_max_iterations=rounds,
            xen_min_dirty_pages=0,
            xen_max_factor=100.0,  # keep going past 3x memory: the rounds are what is measured
        ),
    )
    return config, memory_mib * 256, link


# ---------------------------------------------------------------- QEMU's migration-time predictor
#: the calc-dirty-rate keys the predictor reads (query-dirty-rate in page-sampling mode, QEMU >= 8.1)
DIRTY_RATE_KEYS = ("page-size", "periods", "n-dirty-pages", "n-sampled-pages", "n-total-pages", "n-zero-pages")


def dirty_curve_knots(data) -> list[tuple[float, float]]:
    """The knots (ms, pages) of D(t), the distinct pages dirtied t ms after a clean start, as
    QEMU's predictor builds it from calc-dirty-rate data (``data``: a mapping with the keys of
    :data:`DIRTY_RATE_KEYS`; counts are of sampled pages, scaled by n-total / n-sampled).

    * the measured points, scaled;
    * before the first: the line through the first two points, cut at t = 0 (D(0) is that line's
      value at 0 when positive, else 0): a jump at 0 is the worst case for a concave curve;
    * after the last: the slope of the last two points until D reaches the non-zero pages
      (n-total - n-zero, scaled), then flat there; with a slope <= 0, flat at the last point.

    D is linear between knots and flat after the last one."""
    ratio = data["n-sampled-pages"] / data["n-total-pages"]
    pts = [(float(t), d / ratio) for t, d in zip(data["periods"], data["n-dirty-pages"], strict=True)]
    (t0, d0), (t1, d1) = pts[0], pts[1]
    left = d0 - (d1 - d0) / (t1 - t0) * t0
    knots = [(0.0, max(left, 0.0)), *pts]
    (ta, da), (tb, db) = pts[-2], pts[-1]
    slope = (db - da) / (tb - ta)
    ceiling = data["n-total-pages"] - data["n-zero-pages"] / ratio
    if slope > 0:
        knots.append((tb + (ceiling - db) / slope, ceiling))
    return knots


def dirty_pages_after(knots: list[tuple[float, float]], t_ms: float) -> float:
    """D(t) from :func:`dirty_curve_knots`: piecewise linear, flat after the last knot."""
    if t_ms >= knots[-1][0]:
        return knots[-1][1]
    for (ta, da), (tb, db) in itertools.pairwise(knots):
        if t_ms <= tb:
            return da + (db - da) * (t_ms - ta) / (tb - ta) if tb > ta else db
    return knots[-1][1]  # unreachable


@attrs.frozen
class Prediction:
    """What QEMU's predictor says for one bandwidth and downtime limit."""

    #: total migration time, the last (stop-and-copy) iteration included; None: did not converge
    migration_time_ms: float | None
    #: pages and duration (ms) of each iteration, the last one being the stop-and-copy
    iterations: tuple[tuple[float, float], ...]


def predict_migration(
    data,
    bandwidth_bytes_per_s: float,
    downtime_limit_ms: float,
    deadline_ms: float = 3_600_000.0,
    header_bytes: int = 8,
    zero_page_bytes: float = 8.0,
    concave: bool = False,
) -> Prediction:
    """QEMU's migration-time predictor, on calc-dirty-rate data (see :func:`dirty_curve_knots`).

    Source: ``scripts/predict_migration.py`` by Andrei Gudkov (Huawei), posted to qemu-devel on
    27 April 2023 (message 644a9e7f2bff9d36716a3722c729dc88ea40a35a.1682598010.git.gudkov.andrei@
    huawei.com), v2 of the series "Migration time prediction using calc-dirty-rate" (v1:
    28 February 2023), whose other patches add ``periods``, ``n-dirty-pages``, ``n-zero-pages``
    and the page counts to calc-dirty-rate. This is our own implementation of its algorithm, not
    its code; it reproduces the table the series published (tests/validation/test_predictor.py):

    * iteration 0 sends every page: a non-zero page costs page-size + 8 bytes (QEMU's page
      header), a zero page 8 bytes (``zero_page_bytes``);
    * iteration i+1 sends the D(T_i) pages dirtied during iteration i, which lasted T_i ms;
    * the first iteration that takes at most the downtime limit is the stop-and-copy; the
      migration time is the sum of all iterations, that one included;
    * once the total passes ``deadline_ms`` (one hour) without that, it does not converge.

    The script rounds the time up to whole ms; this returns it unrounded. ``concave``: use the
    curve's concave majorant (:func:`concave_majorant`), the D(t) pmlsim's curve workload
    realises; the same curve when the measured one is concave."""
    ratio = data["n-sampled-pages"] / data["n-total-pages"]
    knots = dirty_curve_knots(data)
    if concave:
        knots = concave_majorant(knots)
    zero = data["n-zero-pages"] / ratio
    normal = data["n-total-pages"] - zero
    page = data["page-size"] + header_bytes
    total = 0.0
    iterations = []
    while True:
        ms = (normal * page + zero * zero_page_bytes) * 1000.0 / bandwidth_bytes_per_s
        total += ms
        iterations.append((normal + zero, ms))
        if ms <= downtime_limit_ms:
            return Prediction(total, tuple(iterations))
        if total > deadline_ms:
            return Prediction(None, tuple(iterations))
        normal, zero = dirty_pages_after(knots, ms), 0.0


def concave_majorant(knots: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The least concave majorant of a piecewise-linear curve that is flat after its last knot
    and non-decreasing: its upper hull. A stationary workload can only have a concave D(t)
    (pmlsim.workloads, kind "curve"); a concave curve is returned unchanged, less collinear knots."""
    hull: list[tuple[float, float]] = []
    for p in knots:
        while len(hull) >= 2:
            (xa, ya), (xb, yb) = hull[-2], hull[-1]
            # drop b when it lies on or under the chord from a to p
            if (yb - ya) * (p[0] - xa) <= (p[1] - ya) * (xb - xa):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


#: The curve of the predictor check (docs/validation.md §4) in calc-dirty-rate form: 512 pages
#: sampled; a hot 1/32 of memory dirtied at once (the line through the first two points meets
#: t = 0 at 16 of 512), then a spread that slows down and reaches all memory after 14.08 s.
EXAMPLE_CURVE = {
    "page-size": 4096,
    "periods": [125, 250, 500, 1000, 2000, 4000],
    "n-dirty-pages": [40, 64, 100, 150, 210, 260],
    "n-sampled-pages": 512,
    "n-total-pages": 16384,
    "n-zero-pages": 0,
}

#: The curve published with the predictor (v1 cover letter, qemu-devel, 28 February 2023, quoted
#: in D. Berrangé's reply of 18 April 2023): memcached under YCSB in a 32 GiB VM.
POSTING_CURVE = {
    "page-size": 4096,
    "periods": [125, 250, 375, 500, 750, 1000, 1500, 2000, 3000, 4001, 6000, 8000, 10000,
                15000, 20000, 25000, 30000, 35000, 40000, 45000, 50000, 60000],
    "n-dirty-pages": [33, 78, 119, 151, 217, 236, 293, 336, 425, 505, 620, 756, 898,
                      1204, 1457, 1723, 1934, 2141, 2328, 2522, 2675, 2958],
    "n-sampled-pages": 16392,
    "n-zero-pages": 10060,
    "n-total-pages": 8392704,
}  # fmt: skip


def curve_scenario(
    bandwidth_mbit_s: float,
    downtime_limit_ms: float,
    curve=None,
    *,
    memory_mib: int = 64,
    ideal: bool = True,
    max_time_ms: float = 5000.0,
    seed: int = 1,
    **sections,
):
    """The predictor check's scenario: a 2-vCPU guest of ``memory_mib`` running the ``curve``
    workload (calc-dirty-rate data, default :data:`EXAMPLE_CURVE`, read as fractions of memory),
    migrated with the ``qemu-pass`` stop rule (the predictor's loop) and QEMU's 8-byte page
    header. ``ideal``: tracking costs nothing (every cost 0) and each sync pauses and drains
    every vCPU (Xen-style), so a sync finds exactly the pages dirtied since the previous one.
    ``sections``: configs to use instead (``pml=PmlConfig(...)``, ``costs=...``, ...)."""
    from pmlsim.config import CostConfig, GuestConfig, MigrationConfig, PmlConfig, SimConfig, WorkloadConfig

    c = EXAMPLE_CURVE if curve is None else curve
    workload = WorkloadConfig(
        kind="curve",
        curve_periods_ms=c["periods"],
        curve_dirty_pages=c["n-dirty-pages"],
        curve_sampled_pages=c["n-sampled-pages"],
        curve_total_pages=c["n-total-pages"],
        curve_zero_pages=c["n-zero-pages"],
    )
    free = CostConfig(**{f.name: 0 for f in attrs.fields(CostConfig)})
    parts = {
        "seed": seed,
        "duration_ms": max_time_ms,
        "guest": GuestConfig(memory_mib=memory_mib, vcpus=2, layout="4k"),
        "pml": PmlConfig(flush_policy="xen") if ideal else PmlConfig(),
        "costs": free if ideal else CostConfig(),
        "workload": workload,
        "migration": MigrationConfig(
            bandwidth_mbit_s=bandwidth_mbit_s,
            downtime_limit_ms=downtime_limit_ms,
            stop_rule="qemu-pass",
            max_time_ms=max_time_ms,
        ),
    }
    parts.update(sections)
    return SimConfig(**parts)
