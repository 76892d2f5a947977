"""What a run produces: counts, costs and the verification outcome."""

from __future__ import annotations

import json
from typing import Any

import attrs

from pmlsim.checkpoint import CheckpointResult
from pmlsim.collector import Collection
from pmlsim.migration import MigrationResult
from pmlsim.verify import LostPage

LOST_EXAMPLES = 10


@attrs.frozen
class Result:
    """The outcome of :func:`pmlsim.simulate`. ``to_dict()`` is the ``--json`` object."""

    config: dict[str, Any]
    seed: int
    sim_time_ns: int
    #: SimPy events scheduled in the run (a measure of the engine's work)
    sim_events: int
    wall_time_s: float
    guest_writes: int
    pml_entries_logged: int
    exits: dict[str, int]
    guest_stall_ns: int
    guest_overhead: float
    flushes: int
    flushed_entries: int
    bitmap_staleness_mean_ns: float
    bitmap_staleness_max_ns: int
    kicks: int
    invepts: int
    syncs: int
    sync_latency_mean_ns: float
    sync_latency_max_ns: int
    dirty_pages_reported: int
    superpages_split: int
    #: hypervisor time spent when logging started (eager splitting), not charged to the guest
    logging_start_ns: int
    #: dirty ring: the most entries any vCPU's ring held at once (0 without a dirty ring)
    dirty_ring_max_used: int
    superpages_recoalesced: int
    #: EPT leaf entries mapping the guest: before logging, when it stopped, after re-coalescing
    ept_leaves_at_start: int
    ept_leaves_at_stop: int
    ept_leaves_after_recoalescing: int
    verified: bool
    late_pages: int
    lost: tuple[LostPage, ...]
    collections: tuple[Collection, ...]
    per_vcpu: tuple[dict[str, Any], ...]
    migration: MigrationResult | None = None
    checkpoint: CheckpointResult | None = None
    #: VRAM tracking: polls, pages reported, late and lost pages
    vram: dict[str, int] | None = None

    @property
    def lost_pages(self) -> int:
        return len(self.lost)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "seed": self.seed,
            "sim_time_ns": self.sim_time_ns,
            "sim_events": self.sim_events,
            "wall_time_s": self.wall_time_s,
            "guest_writes": self.guest_writes,
            "pml_entries_logged": self.pml_entries_logged,
            "exits": dict(self.exits),
            "guest_stall_ns": self.guest_stall_ns,
            "guest_overhead": self.guest_overhead,
            "flushes": self.flushes,
            "flushed_entries": self.flushed_entries,
            "bitmap_staleness_mean_ns": self.bitmap_staleness_mean_ns,
            "bitmap_staleness_max_ns": self.bitmap_staleness_max_ns,
            "kicks": self.kicks,
            "invepts": self.invepts,
            "syncs": self.syncs,
            "sync_latency_mean_ns": self.sync_latency_mean_ns,
            "sync_latency_max_ns": self.sync_latency_max_ns,
            "dirty_pages_reported": self.dirty_pages_reported,
            "collections": len(self.collections),
            "superpages_split": self.superpages_split,
            "logging_start_ns": self.logging_start_ns,
            "dirty_ring_max_used": self.dirty_ring_max_used,
            "superpages_recoalesced": self.superpages_recoalesced,
            "ept_leaves_at_start": self.ept_leaves_at_start,
            "ept_leaves_at_stop": self.ept_leaves_at_stop,
            "ept_leaves_after_recoalescing": self.ept_leaves_after_recoalescing,
            "verified": self.verified,
            "late_pages": self.late_pages,
            "lost_pages": self.lost_pages,
            "lost_examples": [lp.to_dict() for lp in self.lost[:LOST_EXAMPLES]],
            "per_vcpu": list(self.per_vcpu),
            "migration": self.migration.to_dict() if self.migration else None,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "vram": self.vram,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def _migration_lines(self) -> list[str]:
        m = self.migration
        mc = self.config["migration"]
        out = [
            f"  migration: {mc['stop_rule']} stop rule, {mc['bandwidth_mbit_s']:,.0f} Mbit/s,"
            f" downtime limit {mc['downtime_limit_ms']} ms, auto-converge {'on' if mc['auto_converge'] else 'off'}",
            "    round   start_ms     end_ms   pages_sent  dirty_found  in_flight  dirty_rate/s  throttle",
        ]
        for r in m.rounds:
            tag = " stop-and-copy" if r.stop_and_copy else ""
            out.append(
                f"    {r.index:>5} {r.start_ns / 1e6:>10.3f} {r.end_ns / 1e6:>10.3f} {r.pages_sent:>12,}"
                f" {r.dirty_pages_found:>12,} {r.in_flight_entries:>10,}"
                f" {'-' if r.dirty_rate_pages_per_s is None else f'{r.dirty_rate_pages_per_s:,.0f}':>13}"
                f" {r.throttle_pct:>8}%{tag}"
            )
        if m.converged:
            out.append(
                f"  migrated in {m.migration_time_ns / 1e6:.3f} ms, downtime {m.downtime_ns / 1e6:.3f} ms,"
                f" {m.total_pages_sent:,} pages ({m.bytes_sent / 2**20:,.1f} MiB) sent, stop reason {m.stop_reason}"
            )
        else:
            out.append(
                f"  DID NOT CONVERGE within {m.migration_time_ns / 1e6:.3f} ms"
                f" ({m.total_pages_sent:,} pages sent); raise bandwidth or downtime limit, or enable auto-converge"
            )
        return out

    def summary(self) -> str:
        """A readable report for the terminal."""
        c = self.config
        g, p = c["guest"], c["pml"]
        sim_ms = self.sim_time_ns / 1e6
        exits = ", ".join(f"{k} {v}" for k, v in sorted(self.exits.items())) or "none"
        lines = [
            f"pmlsim: {g['memory_mib']} MiB guest, {g['vcpus']} vCPUs, layout {g['layout']}, "
            + {
                "pml": f"PML {p['buffer_entries']} entries, ",
                "dirty-ring": f"PML {p['buffer_entries']} entries into dirty rings of"
                f" {c['tracking']['ring_entries']}, ",
                "write-protect": "write protection (no PML), ",
                "hdbss": f"Arm HDBSS {p['buffer_entries']} entries, ",
            }[c["tracking"]["mechanism"]]
            + f"flush policy {p['flush_policy']}, "
            f"superpages {c['superpage']['policy']}, engine {c['engine']}, seed {self.seed}",
            f"  simulated {sim_ms:.3f} ms in {self.wall_time_s:.2f} s wall"
            f" ({self.guest_writes / max(self.wall_time_s, 1e-9) / 1e6:.1f} M writes/s)",
            f"  guest writes        {self.guest_writes:>14,}",
            f"  PML entries logged  {self.pml_entries_logged:>14,}",
            f"  VM exits            {sum(self.exits.values()):>14,}  ({exits})",
            f"  guest stall         {self.guest_stall_ns / 1e6:>14.3f} ms  (overhead {self.guest_overhead:.3%})",
            f"  PML flushes         {self.flushes:>14,}  ({self.flushed_entries:,} entries,"
            f" staleness mean {self.bitmap_staleness_mean_ns / 1e3:.1f} us,"
            f" max {self.bitmap_staleness_max_ns / 1e3:.1f} us)",
            f"  kicks / INVEPTs     {self.kicks:>14,}  / {self.invepts:,}",
            f"  superpages split    {self.superpages_split:>14,}  (EPT leaves {self.ept_leaves_at_start:,} at start,"
            f" {self.ept_leaves_at_stop:,} at stop"
            + (
                f", {self.ept_leaves_after_recoalescing:,} after re-coalescing {self.superpages_recoalesced:,})"
                if self.superpages_recoalesced
                else ")"
            ),
        ]
        if self.collections:
            lines.append(
                f"  dirty pages reported{self.dirty_pages_reported:>14,}  over {len(self.collections)} collections"
                f" ({self.late_pages:,} pages one collection late)"
            )
        if self.migration is not None:
            lines += self._migration_lines()
        if self.checkpoint is not None:
            ck = self.checkpoint
            lines.append(
                f"  checkpoints         {len(ck.epochs):>14,}  (pause mean {ck.pause_mean_ns / 1e3:.1f} us,"
                f" max {ck.pause_max_ns / 1e3:.1f} us; {ck.pages_copied:,} pages copied; {ck.lost_pages} lost)"
            )
        if self.vram is not None:
            vr = self.vram
            lines.append(
                f"  VRAM polls          {vr['polls']:>14,}  ({vr['pages']:,} pages reported, {vr['late_pages']:,} late,"
                f" {vr['lost_pages']} lost)"
            )
        if not self.verified:
            why = "migration did not converge" if self.migration else "no dirty-log consumer"
            lines.append(f"  verification        not run ({why})")
        elif not self.lost:
            lines.append("  verification        OK: every write reached the consumer")
        else:
            lines.append(f"  verification        FAILED: {self.lost_pages:,} lost pages")
            for lp in self.lost[:LOST_EXAMPLES]:
                lines.append(
                    f"    lost gfn {lp.gfn:#x}: write by vCPU {lp.vcpu} at {lp.write_time_ns} ns"
                    f" (version {lp.version}), cause {lp.cause}"
                )
        return "\n".join(lines)
