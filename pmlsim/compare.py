"""Side by side: the same workload and seed under each dirty-tracking mechanism."""

from __future__ import annotations

import attrs

from pmlsim.config import MECHANISMS, ConfigError, SimConfig
from pmlsim.results import Result
from pmlsim.sim import simulate


def parse_mechanisms(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    for m in names:
        if m not in MECHANISMS:
            raise ConfigError("--mechanisms", m, f"must be among {', '.join(MECHANISMS)}")
    if not names:
        raise ConfigError("--mechanisms", text, f"must name at least one of {', '.join(MECHANISMS)}")
    return names


def compare(config: SimConfig, mechanisms: list[str]) -> list[tuple[str, Result]]:
    """Run ``config`` once per mechanism (same seed, same writes)."""
    out = []
    for m in mechanisms:
        cfg = attrs.evolve(config, tracking=attrs.evolve(config.tracking, mechanism=m))
        if m == "dirty-ring" and cfg.superpage.policy == "mark-whole":
            raise ConfigError("superpage.policy", "mark-whole", "cannot be compared with dirty-ring")
        out.append((m, simulate(cfg)))
    return out


def table(rows: list[tuple[str, Result]]) -> str:
    reasons = sorted({k for _, r in rows for k in r.exits})
    head = ["mechanism", "guest overhead", *(f"exits {k}" for k in reasons)]
    head += ["migration ms", "downtime ms", "pages sent", "lost pages"]
    lines = [head]
    for m, r in rows:
        mig = r.migration
        lines.append(
            [
                m,
                f"{r.guest_overhead:.3%}",
                *(f"{r.exits.get(k, 0):,}" for k in reasons),
                f"{mig.migration_time_ns / 1e6:,.1f}" if mig else "-",
                f"{mig.downtime_ns / 1e6:,.1f}" if mig and mig.downtime_ns is not None else "-",
                f"{mig.total_pages_sent:,}" if mig else f"{r.dirty_pages_reported:,} (collected)",
                f"{r.lost_pages:,}" if r.verified else "not verified",
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in lines
    )
