"""Closed forms the simulator is validated against (tests/validation, docs/validation.md)."""

from __future__ import annotations

import math


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
