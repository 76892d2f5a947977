"""Configuration: frozen attrs classes with validators, loadable from TOML.

Every field carries its unit in its name. A bad value raises :class:`ConfigError`
naming the field (``section.key``), the value and what is allowed.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import attrs

MIB = 1 << 20
PAGE_SIZE = 4096
PAGES_PER_MIB = MIB // PAGE_SIZE

LEAF_PAGES = {"4k": 1, "2m": 512, "1g": 512 * 512}
LAYOUTS = ("4k", "2m", "1g", "mixed")
FLUSH_POLICIES = ("xen", "kvm", "periodic")
SUPERPAGE_POLICIES = ("naive", "mark-whole", "split-on-write", "eager-split")
WORKLOAD_KINDS = ("script", "uniform", "hotcold", "zipf", "sequential", "curve")
SHARINGS = ("partitioned", "shared")
ENGINES = ("fast", "reference")
STOP_RULES = ("qemu", "xen", "qemu-pass")
REARM_MODES = ("before-send", "after-send")
MECHANISMS = ("pml", "write-protect", "dirty-ring", "hdbss")
#: KVM_DIRTY_RING_RSVD_ENTRIES: ring entries kept free besides a whole PML buffer
RING_RESERVE = 64
MAX_VCPUS = 64  # the TLB model keeps one bit per vCPU in a 64-bit mask
MAX_PML_ENTRIES = 65536


class ConfigError(ValueError):
    """A configuration value is out of range. ``str(err)`` is one line for the user."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r}: {allowed}")


# ---------------------------------------------------------------- validators
def _name(attribute: attrs.Attribute) -> str:
    return attribute.metadata.get("path", attribute.name)


def _int_range(lo: int, hi: int | None = None):
    def check(inst, attribute, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                _name(attribute), value, f"must be an integer in [{lo}, {hi if hi is not None else 'inf'}]"
            )
        if value < lo or (hi is not None and value > hi):
            raise ConfigError(_name(attribute), value, f"must be in [{lo}, {hi if hi is not None else 'inf'}]")

    return check


def _num_range(lo: float, hi: float | None = None, *, lo_open: bool = False):
    def check(inst, attribute, value):
        bound = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}]"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(_name(attribute), value, f"must be a finite number in {bound}")
        if value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
            raise ConfigError(_name(attribute), value, f"must be in {bound}")

    return check


def _choice(options: tuple[str, ...]):
    def check(inst, attribute, value):
        if value not in options:
            raise ConfigError(_name(attribute), value, f"must be one of {', '.join(options)}")

    return check


def _bool(inst, attribute, value):
    if not isinstance(value, bool):
        raise ConfigError(_name(attribute), value, "must be true or false")


def _optional(validator):
    def check(inst, attribute, value):
        if value is not None:
            validator(inst, attribute, value)

    return check


def _number_list(lo: float, *, lo_open: bool = False):
    """A list of finite numbers, each >= lo (> lo when ``lo_open``); the order is checked later."""

    def check(inst, attribute, value):
        bound = f"{'(' if lo_open else '['}{lo}, inf)"
        if not isinstance(value, tuple):
            raise ConfigError(_name(attribute), value, f"must be a list of numbers in {bound}")
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise ConfigError(f"{_name(attribute)}[{i}]", x, f"must be a finite number in {bound}")
            if x < lo or (lo_open and x == lo):
                raise ConfigError(f"{_name(attribute)}[{i}]", x, f"must be in {bound}")

    return check


def _to_tuple(value):
    return tuple(value) if isinstance(value, list | tuple) else value


def _field(default, validator, path: str, **kw):
    return attrs.field(default=default, validator=validator, metadata={"path": path}, **kw)


# ---------------------------------------------------------------- sections
@attrs.frozen
class LeafRange:
    """Guest-physical range [start_mib, end_mib) mapped by leaves of one size."""

    start_mib: int
    end_mib: int
    leaf: str


@attrs.frozen
class GuestConfig:
    """The guest: memory size, vCPU count and how the EPT maps its memory."""

    #: at most 512 GiB (GFNs below 2**27: the fast engine packs GFN and time in one int64)
    memory_mib: int = _field(1024, _int_range(1, 1 << 19), "guest.memory_mib")
    vcpus: int = _field(4, _int_range(1, MAX_VCPUS), "guest.vcpus")
    #: ``4k``, ``2m``, ``1g`` (every leaf that size) or ``mixed`` (fractions or ranges below).
    layout: str = _field("4k", _choice(LAYOUTS), "guest.layout")
    #: with ``mixed``: memory from 0 mapped by 1 GiB leaves, then by 2 MiB leaves, rest 4 KiB.
    fraction_1g: float = _field(0.0, _num_range(0.0, 1.0), "guest.fraction_1g")
    fraction_2m: float = _field(0.0, _num_range(0.0, 1.0), "guest.fraction_2m")
    #: with ``mixed``: explicit ranges; when given they replace the fractions.
    ranges: tuple[LeafRange, ...] = attrs.field(default=(), converter=lambda rs: _to_ranges(rs))

    @property
    def pages(self) -> int:
        return self.memory_mib * PAGES_PER_MIB

    def leaf_ranges(self) -> list[tuple[int, int, str]]:
        """Superpage ranges as (first_gfn, end_gfn, leaf), validated against the memory size."""
        n = self.pages
        if self.layout in ("2m", "1g"):
            size = LEAF_PAGES[self.layout]
            if n % size:
                raise ConfigError(
                    "guest.memory_mib",
                    self.memory_mib,
                    f"must be a multiple of {size * PAGE_SIZE // MIB} MiB with layout={self.layout!r}",
                )
            return [(0, n, self.layout)]
        if self.layout == "4k":
            return []
        if self.ranges:
            out = []
            for i, r in sorted(enumerate(self.ranges), key=lambda ir: ir[1].start_mib):
                field = f"guest.ranges[{i}]"
                if r.leaf not in LEAF_PAGES:
                    raise ConfigError(f"{field}.leaf", r.leaf, "must be one of 4k, 2m, 1g")
                if not (0 <= r.start_mib < r.end_mib <= self.memory_mib):
                    raise ConfigError(
                        field, (r.start_mib, r.end_mib), f"must satisfy 0 <= start_mib < end_mib <= {self.memory_mib}"
                    )
                size_mib = LEAF_PAGES[r.leaf] * PAGE_SIZE // MIB
                if r.start_mib % max(size_mib, 1) or r.end_mib % max(size_mib, 1):
                    raise ConfigError(field, (r.start_mib, r.end_mib), f"must be aligned to the {r.leaf} leaf size")
                if out and r.start_mib * PAGES_PER_MIB < out[-1][1]:
                    raise ConfigError(field, (r.start_mib, r.end_mib), "must not overlap another range")
                if r.leaf != "4k":
                    out.append((r.start_mib * PAGES_PER_MIB, r.end_mib * PAGES_PER_MIB, r.leaf))
            return out
        if self.fraction_1g + self.fraction_2m > 1.0:
            raise ConfigError("guest.fraction_2m", self.fraction_2m, "fraction_1g + fraction_2m must be <= 1")
        out = []
        n1 = int(n * self.fraction_1g) // LEAF_PAGES["1g"] * LEAF_PAGES["1g"]
        if n1:
            out.append((0, n1, "1g"))
        n2 = int(n * self.fraction_2m) // LEAF_PAGES["2m"] * LEAF_PAGES["2m"]
        if n2:
            out.append((n1, n1 + n2, "2m"))
        return out


def _to_ranges(value) -> tuple[LeafRange, ...]:
    out = []
    for i, r in enumerate(value or ()):
        if isinstance(r, LeafRange):
            out.append(r)
        elif isinstance(r, dict):
            try:
                out.append(LeafRange(int(r["start_mib"]), int(r["end_mib"]), str(r["leaf"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"guest.ranges[{i}]", r, "needs integer start_mib, end_mib and leaf") from exc
        else:
            raise ConfigError(f"guest.ranges[{i}]", r, "must be a table with start_mib, end_mib, leaf")
    return tuple(out)


@attrs.frozen
class PmlConfig:
    """Per-vCPU PML buffer and the hypervisor's flush policy."""

    #: entries per vCPU buffer; the hardware has 512 (SDM 28.2.5); others are what-if studies.
    buffer_entries: int = _field(512, _int_range(1, MAX_PML_ENTRIES), "pml.buffer_entries")
    #: ``xen``, ``kvm`` or ``periodic`` (docs/model.md, "Flush policies").
    flush_policy: str = _field("kvm", _choice(FLUSH_POLICIES), "pml.flush_policy")
    #: with ``periodic``: every vCPU is kicked (and so drained) this often.
    flush_interval_us: float = _field(1000.0, _num_range(0.001, 1e9), "pml.flush_interval_us")


@attrs.frozen
class SuperpageConfig:
    """How the hypervisor tracks 2 MiB / 1 GiB leaves while logging."""

    policy: str = _field("split-on-write", _choice(SUPERPAGE_POLICIES), "superpage.policy")
    #: rebuild split superpages when logging stops (Xen cannot; this measures what it would give).
    recoalesce_on_stop: bool = _field(False, _bool, "superpage.recoalesce_on_stop")


@attrs.frozen
class TrackingConfig:
    """How writes are tracked: PML, or write protection (the pre-PML baseline)."""

    #: ``pml``: the CPU logs the first write to a clean leaf; ``write-protect``: no PML, every
    #: leaf is write-protected while logging and the first write to it takes an EPT violation
    #: that marks it dirty and makes it writable (KVM without PML)
    #: ``dirty-ring``: PML, but each vCPU's drained entries go to its own ring
    #: (KVM_CAP_DIRTY_LOG_RING) instead of the shared bitmap
    mechanism: str = _field("pml", _choice(MECHANISMS), "tracking.mechanism")
    #: ``hdbss``: Arm FEAT_HDBSS semantics: entries hold the block-aligned IPA and its level,
    #: the index counts up, a full buffer makes the write fault (``pml.buffer_entries`` sizes it)
    #: dirty ring: entries per vCPU ring (QEMU's dirty-ring-size; KVM wants a power of two)
    ring_entries: int = _field(4096, _int_range(1, 1 << 24), "tracking.ring_entries")
    #: dirty ring: on KVM_EXIT_DIRTY_RING_FULL the vCPU thread reaps every ring into the VMM's
    #: own dirty bitmap and resets them (QEMU ``kvm_dirty_ring_reap``); false: the vCPU waits
    #: until the consumer's next sync harvests the rings
    reap_on_full: bool = _field(True, _bool, "tracking.reap_on_full")
    #: count the CPU's A/D updates of guest page tables as writes (EPT A/D on: SDM 28.2.4):
    #: a write that misses the vCPU's TLB first walks the guest page tables (three pages, kept
    #: at the top of guest memory), and each walk writes them
    guest_pt_walks: bool = _field(False, _bool, "tracking.guest_pt_walks")


@attrs.frozen
class SyncConfig:
    """The dirty-log sync protocol. The defaults are safe; the others exist to show races."""

    #: make the sync drain PML buffers (pause + drain for Xen, kick for KVM). False: read as is.
    drain_pml: bool = _field(True, _bool, "sync.drain_pml")
    #: flush TLBs (INVEPT) after clearing D bits. False: stale TLB entries lose writes.
    invept: bool = _field(True, _bool, "sync.invept")
    #: ``eager``: re-arm clears the collected pages' D bits at once (KVM); ``lazy``: Xen's
    #: global type change: every leaf table is marked for recalculation, and the first write
    #: into a table takes an EPT-misconfiguration exit that re-arms that table
    rearm_style: str = _field("eager", _choice(("eager", "lazy")), "sync.rearm_style")


@attrs.frozen
class WorkloadConfig:
    """What the guest writes."""

    kind: str = _field("hotcold", _choice(WORKLOAD_KINDS), "workload.kind")
    #: guest writes per second of guest run time, per vCPU (0 = idle).
    writes_per_s_per_vcpu: float = _field(250e3, _num_range(0.0, 1e10), "workload.writes_per_s_per_vcpu")
    #: ``partitioned`` (each vCPU its own slice of memory) or ``shared`` (all of it).
    sharing: str = _field("partitioned", _choice(SHARINGS), "workload.sharing")
    #: hotcold: fraction of each region that is hot, and fraction of writes that go there.
    hot_fraction: float = _field(0.05, _num_range(0.0, 1.0, lo_open=True), "workload.hot_fraction")
    hot_write_fraction: float = _field(0.95, _num_range(0.0, 1.0), "workload.hot_write_fraction")
    #: zipf: exponent s of the rank distribution.
    zipf_s: float = _field(1.1, _num_range(0.0, 10.0, lo_open=True), "workload.zipf_s")
    #: script: a CSV file with header ``time_ns,vcpu,gpa``.
    path: str | None = attrs.field(default=None, metadata={"path": "workload.path"})
    #: script: writes as (time_ns, vcpu, gpa) tuples, given from Python.
    script: tuple[tuple[int, int, int], ...] | None = attrs.field(
        default=None, converter=lambda s: None if s is None else tuple(tuple(int(x) for x in w) for w in s)
    )
    #: curve (instead of ``path``, a calc-dirty-rate JSON): distinct pages dirtied since a clean
    #: start, as QEMU's calc-dirty-rate reports them: at these times (ms, increasing) ...
    curve_periods_ms: tuple[float, ...] | None = _field(
        None, _optional(_number_list(0.0, lo_open=True)), "workload.curve_periods_ms", converter=_to_tuple
    )
    #: ... these many of the sampled pages (non-decreasing) ...
    curve_dirty_pages: tuple[float, ...] | None = _field(
        None, _optional(_number_list(0.0)), "workload.curve_dirty_pages", converter=_to_tuple
    )
    #: ... out of this many sampled pages (unset: the total pages: the counts are pages) ...
    curve_sampled_pages: int | None = _field(None, _optional(_int_range(1)), "workload.curve_sampled_pages")
    #: ... of a guest of this many pages (unset: this guest's); the curve is read as fractions
    curve_total_pages: int | None = _field(None, _optional(_int_range(1)), "workload.curve_total_pages")
    #: sampled pages found all zero: never dirtied, so the curve saturates below them
    curve_zero_pages: int = _field(0, _int_range(0), "workload.curve_zero_pages")


@attrs.frozen
class CollectorConfig:
    """A dirty-log consumer that syncs every ``interval_us`` and verifies what it collects."""

    enabled: bool = _field(False, _bool, "collector.enabled")
    interval_us: float = _field(1000.0, _num_range(0.001, 1e9), "collector.interval_us")


@attrs.frozen
class MigrationConfig:
    """Pre-copy live migration, the dirty-log consumer of the default scenario."""

    enabled: bool = _field(True, _bool, "migration.enabled")
    #: link rate; QEMU's default max-bandwidth is 128 MiB/s, a modern link much more
    bandwidth_mbit_s: float = _field(10000.0, _num_range(0.0, 1e9, lo_open=True), "migration.bandwidth_mbit_s")
    #: bytes on the wire per page besides its 4 KiB (QEMU's be64 address/flags header)
    page_header_bytes: int = _field(8, _int_range(0, 1 << 20), "migration.page_header_bytes")
    #: QEMU downtime-limit (DEFAULT_MIGRATE_SET_DOWNTIME 300 ms)
    downtime_limit_ms: float = _field(300.0, _num_range(0.0, 2e6, lo_open=True), "migration.downtime_limit_ms")
    #: ``qemu`` (pending < bandwidth x downtime limit) or ``xen`` (30 iterations, < 50 pages, > 3x RAM)
    stop_rule: str = _field("qemu", _choice(STOP_RULES), "migration.stop_rule")
    #: QEMU sends for at most this long before re-checking the stop condition (ram.c MAX_WAIT)
    iteration_ms: float = _field(50.0, _num_range(0.0, 1e6, lo_open=True), "migration.iteration_ms")
    #: end a migration that has not switched over after this long ("did not converge");
    #: unset: the rest of the simulated duration
    max_time_ms: float | None = _field(None, _optional(_num_range(0.0, 1e7, lo_open=True)), "migration.max_time_ms")
    #: ``before-send`` (safe: clear D and INVEPT, then copy) or ``after-send`` (copy, then re-arm)
    rearm: str = _field("before-send", _choice(REARM_MODES), "migration.rearm")
    #: QEMU auto-converge (cpu-throttle-initial/increment/max, throttle-trigger-threshold)
    auto_converge: bool = _field(False, _bool, "migration.auto_converge")
    throttle_initial_pct: int = _field(20, _int_range(1, 99), "migration.throttle_initial_pct")
    throttle_increment_pct: int = _field(10, _int_range(1, 99), "migration.throttle_increment_pct")
    throttle_max_pct: int = _field(99, _int_range(1, 99), "migration.throttle_max_pct")
    throttle_trigger_threshold_pct: int = _field(50, _int_range(1, 100), "migration.throttle_trigger_threshold_pct")
    #: QEMU updates rates and checks the throttle trigger at most once per second
    throttle_period_ms: float = _field(1000.0, _num_range(0.0, 1e7, lo_open=True), "migration.throttle_period_ms")
    #: Xen xc_domain_save: DEF_MAX_ITERS 29 (30 rounds), 50 pages, DEF_MAX_FACTOR 3
    xen_max_iterations: int = _field(30, _int_range(1, 10**6), "migration.xen_max_iterations")
    xen_min_dirty_pages: int = _field(50, _int_range(0, 2**62), "migration.xen_min_dirty_pages")
    xen_max_factor: float = _field(3.0, _num_range(0.0, 1e6, lo_open=True), "migration.xen_max_factor")

    @property
    def page_wire_bits(self) -> int:
        return (PAGE_SIZE + self.page_header_bytes) * 8


@attrs.frozen
class CheckpointConfig:
    """Remus/COLO-style checkpointing: pause, sync, copy the dirty pages, resume, every epoch."""

    enabled: bool = _field(False, _bool, "checkpoint.enabled")
    epoch_ms: float = _field(25.0, _num_range(0.0, 1e7, lo_open=True), "checkpoint.epoch_ms")
    #: copying a 4 KiB page to the backup (assumption: about 16 GB/s of memcpy)
    copy_ns_per_page: int = _field(250, _int_range(0, 10**9), "checkpoint.copy_ns_per_page")


@attrs.frozen
class VramConfig:
    """VRAM tracking: a GFN range whose dirty state is polled on its own (Xen
    ``hap_track_dirty_vram``, QEMU's VGA dirty tracking), alongside any other consumer."""

    enabled: bool = _field(False, _bool, "vram.enabled")
    start_mib: int = _field(0, _int_range(0, 1 << 19), "vram.start_mib")
    size_mib: int = _field(16, _int_range(1, 1 << 19), "vram.size_mib")
    interval_ms: float = _field(30.0, _num_range(0.0, 1e7, lo_open=True), "vram.interval_ms")


@attrs.frozen
class CostConfig:
    """Time costs of hypervisor work, in ns. Sources and assumptions: docs/config.md."""

    exit_roundtrip_ns: int = _field(1200, _int_range(0, 10**9), "costs.exit_roundtrip_ns")
    pml_flush_per_entry_ns: int = _field(40, _int_range(0, 10**9), "costs.pml_flush_per_entry_ns")
    leaf_lookup_per_entry_ns: int = _field(30, _int_range(0, 10**9), "costs.leaf_lookup_per_entry_ns")
    ept_violation_ns: int = _field(2000, _int_range(0, 10**9), "costs.ept_violation_ns")
    split_per_entry_ns: int = _field(8, _int_range(0, 10**9), "costs.split_per_entry_ns")
    kick_ipi_ns: int = _field(1500, _int_range(0, 10**9), "costs.kick_ipi_ns")
    invept_ns: int = _field(1000, _int_range(0, 10**9), "costs.invept_ns")
    rearm_per_page_ns: int = _field(20, _int_range(0, 10**9), "costs.rearm_per_page_ns")
    #: an EPT-misconfiguration exit's handler (resolve_misconfig: recompute a leaf table)
    ept_misconfig_ns: int = _field(2500, _int_range(0, 10**9), "costs.ept_misconfig_ns")
    bitmap_scan_per_64_pages_ns: int = _field(2, _int_range(0, 10**9), "costs.bitmap_scan_per_64_pages_ns")


@attrs.frozen
class SimConfig:
    """One simulation: the guest, the hardware, the hypervisor, the workload and the consumer."""

    seed: int = _field(0, _int_range(0, 2**63 - 1), "seed")
    #: simulated time limit; a migration ends the run earlier when it completes
    duration_ms: float = _field(5000.0, _num_range(0.0, 1e7, lo_open=True), "duration_ms")
    #: ``fast`` (windows between events, exact) or ``reference`` (one write at a time).
    engine: str = _field("fast", _choice(ENGINES), "engine")
    guest: GuestConfig = attrs.field(factory=GuestConfig)
    pml: PmlConfig = attrs.field(factory=PmlConfig)
    tracking: TrackingConfig = attrs.field(factory=TrackingConfig)
    superpage: SuperpageConfig = attrs.field(factory=SuperpageConfig)
    sync: SyncConfig = attrs.field(factory=SyncConfig)
    workload: WorkloadConfig = attrs.field(factory=WorkloadConfig)
    collector: CollectorConfig = attrs.field(factory=CollectorConfig)
    migration: MigrationConfig = attrs.field(factory=MigrationConfig)
    checkpoint: CheckpointConfig = attrs.field(factory=CheckpointConfig)
    vram: VramConfig = attrs.field(factory=VramConfig)
    costs: CostConfig = attrs.field(factory=CostConfig)

    def __attrs_post_init__(self):
        self.guest.leaf_ranges()  # validates layout against memory size
        reserve = RING_RESERVE + self.pml.buffer_entries
        if self.tracking.mechanism == "dirty-ring" and self.tracking.ring_entries <= reserve:
            raise ConfigError(
                "tracking.ring_entries",
                self.tracking.ring_entries,
                f"must be greater than its reserve, 64 + pml.buffer_entries = {reserve}",
            )
        if self.tracking.mechanism == "dirty-ring" and self.superpage.policy == "mark-whole":
            raise ConfigError(
                "superpage.policy", "mark-whole", "cannot be used with a dirty ring (a whole leaf would not fit)"
            )
        if self.tracking.guest_pt_walks:
            from pmlsim.ept import page_table_pages

            pt_first = page_table_pages(self.guest.pages)[0]
            if any(end > pt_first for _, end, _ in self.guest.leaf_ranges()):
                raise ConfigError(
                    "guest.layout",
                    self.guest.layout,
                    f"with tracking.guest_pt_walks the guest page tables (GFN {pt_first:#x} up) must be"
                    " mapped by 4 KiB leaves: leave the end of memory out of superpage ranges",
                )
        if self.vram.enabled and self.vram.start_mib + self.vram.size_mib > self.guest.memory_mib:
            raise ConfigError(
                "vram.size_mib",
                self.vram.size_mib,
                f"the range [{self.vram.start_mib}, {self.vram.start_mib + self.vram.size_mib}) MiB is outside"
                f" guest memory (guest.memory_mib={self.guest.memory_mib})",
            )
        mt = self.migration.max_time_ms
        if self.migration.enabled and mt is not None and mt > self.duration_ms:
            raise ConfigError(
                "migration.max_time_ms", mt, f"must be <= duration_ms ({self.duration_ms}): the run would end first"
            )
        w = self.workload
        if w.kind == "script" and w.script is None and w.path is None:
            raise ConfigError("workload.path", None, "workload.kind='script' needs workload.path (a CSV) or a script")
        if w.kind == "script" and w.script is not None:
            from pmlsim.workloads import validate_script

            validate_script(w.script, self.guest, source="workload.script")
        if w.kind == "curve":
            from pmlsim.workloads import curve_data

            curve_data(self)  # validates the curve, inline or read from workload.path

    @property
    def duration_ns(self) -> int:
        return round(self.duration_ms * 1e6)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved configuration as plain data (JSON/TOML-able)."""

        def ser(inst, field, value):
            if isinstance(value, tuple):
                return [list(v) if isinstance(v, tuple) else v for v in value]
            return value

        return attrs.asdict(self, value_serializer=ser)


SECTIONS = {
    "guest": GuestConfig,
    "pml": PmlConfig,
    "tracking": TrackingConfig,
    "superpage": SuperpageConfig,
    "sync": SyncConfig,
    "workload": WorkloadConfig,
    "collector": CollectorConfig,
    "migration": MigrationConfig,
    "checkpoint": CheckpointConfig,
    "vram": VramConfig,
    "costs": CostConfig,
}
TOP_LEVEL = ("seed", "duration_ms", "engine")


def config_from_dict(data: dict[str, Any], base: SimConfig | None = None) -> SimConfig:
    """Build a config from nested plain data (as TOML gives), over ``base`` (default config)."""
    base = base or SimConfig()
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in TOP_LEVEL:
            top[key] = value
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(key, value, "must be a table of settings")
            cls = SECTIONS[key]
            names = {f.name for f in attrs.fields(cls)}
            for k in value:
                if k not in names:
                    raise ConfigError(f"{key}.{k}", value[k], f"unknown setting; {key} has: {', '.join(sorted(names))}")
            top[key] = attrs.evolve(getattr(base, key), **value)
        else:
            raise ConfigError(key, value, f"unknown setting; top level has: {', '.join(TOP_LEVEL + tuple(SECTIONS))}")
    try:
        return attrs.evolve(base, **top)
    except TypeError as exc:  # wrong type that attrs itself rejects
        raise ConfigError("config", data, str(exc)) from exc


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as TOML) to nested config data."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "must look like section.key=value")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(path, text, "is not a section")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def read_toml(path: str | Path, field: str) -> dict[str, Any]:
    """A TOML file's data; a missing or malformed file is a ConfigError naming ``field``."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(field, str(p), "file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(field, str(p), f"is not valid TOML ({exc})") from exc


def parse_cell(text: Any) -> Any:
    """A value read back from a CSV cell: int, float, bool, None for empty, else the text."""
    if not isinstance(text, str):
        return text
    if text == "":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SimConfig:
    """Load a TOML config file (or the defaults), then apply ``--set`` style overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        data = read_toml(p, "config")
        wl = data.get("workload")
        if isinstance(wl, dict) and isinstance(wl.get("path"), str):
            # relative script paths are relative to the config file
            wp = Path(wl["path"])
            if not wp.is_absolute():
                wl["path"] = str(p.parent / wp)
    apply_overrides(data, overrides or [])
    return config_from_dict(data)
