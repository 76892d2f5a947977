"""Hypothesis strategies for random simulation configs."""

from __future__ import annotations

from hypothesis import strategies as st

from pmlsim import (
    CollectorConfig,
    GuestConfig,
    MigrationConfig,
    PmlConfig,
    SimConfig,
    SuperpageConfig,
    SyncConfig,
    TrackingConfig,
    WorkloadConfig,
)
from pmlsim.config import CheckpointConfig, VramConfig

SAFE_SUPERPAGE = ["mark-whole", "split-on-write", "eager-split"]


@st.composite
def configs(draw, safe: bool = False, engine: str = "fast") -> SimConfig:
    vcpus = draw(st.integers(1, 4))
    layout = draw(st.sampled_from(["4k", "2m", "mixed"]))
    memory_mib = draw(st.sampled_from([4, 8, 16]))
    superpage = draw(st.sampled_from(SAFE_SUPERPAGE if safe else [*SAFE_SUPERPAGE, "naive"]))
    drain, invept = (True, True) if safe else (draw(st.booleans()), draw(st.booleans()))
    rearm_style = draw(st.sampled_from(["eager", "eager", "lazy"]))
    kind = draw(st.sampled_from(["uniform", "hotcold", "zipf", "sequential", "script", "curve"]))
    # curve: distinct pages (of 100 sampled) after 0.05, 0.2 and 0.5 ms; the first two shapes
    # start at 0 (no hot sweep), the third jumps (a hot sweep) and saturates below 50 zero pages
    curve = draw(st.sampled_from([((1, 6, 9), 0), ((2, 10, 30), 0), ((2, 4, 5), 50)]))
    script = None
    if kind == "script":
        # few distinct times and pages: many same-ns ties between vCPUs, many shared leaves
        script = draw(
            st.lists(
                st.tuples(
                    st.integers(0, 30).map(lambda t: t * 1000),
                    st.integers(0, vcpus - 1),
                    st.integers(0, memory_mib * 256 - 1).map(lambda g: g * 4096 + 8),
                ),
                max_size=300,
            )
        )
    mechanism = draw(st.sampled_from(["pml", "pml", "write-protect", "dirty-ring", "hdbss"]))
    if mechanism == "dirty-ring" and superpage == "mark-whole":
        superpage = "split-on-write"
    buffer_entries = draw(st.sampled_from([1, 2, 7, 64, 512]))
    tracking = TrackingConfig(
        mechanism=mechanism,
        ring_entries=buffer_entries + 64 + draw(st.sampled_from([1, 16, 4096])),
        reap_on_full=draw(st.booleans()),
        guest_pt_walks=layout != "2m" and kind != "script" and draw(st.sampled_from([False, False, True])),
    )
    if draw(st.booleans()):
        consumer = {
            "collector": CollectorConfig(enabled=True, interval_us=draw(st.sampled_from([3.0, 20.0, 100.0]))),
            "migration": MigrationConfig(enabled=False),
        }
        duration_ms = draw(st.sampled_from([0.05, 0.2]))
        rate = draw(st.sampled_from([2e5, 2e6, 1e7]))
    else:
        # a small, fast link: 125 ns or 1 us per page, so passes are short
        consumer = {
            "collector": CollectorConfig(enabled=False),
            "migration": MigrationConfig(
                bandwidth_mbit_s=draw(st.sampled_from([262144.0, 32768.0])),
                page_header_bytes=0,
                stop_rule=draw(st.sampled_from(["qemu", "xen", "qemu-pass"])),
                downtime_limit_ms=draw(st.sampled_from([0.02, 0.3])),
                iteration_ms=draw(st.sampled_from([0.05, 50.0])),
                rearm="before-send" if safe else draw(st.sampled_from(["before-send", "after-send"])),
                auto_converge=draw(st.booleans()),
                throttle_period_ms=0.1,
            ),
        }
        duration_ms = 1.0
        rate = draw(st.sampled_from([2e5, 2e6]))
    return SimConfig(
        seed=draw(st.integers(0, 2**32)),
        duration_ms=duration_ms,
        engine=engine,
        guest=GuestConfig(memory_mib=memory_mib, vcpus=vcpus, layout=layout, fraction_2m=0.5),
        pml=PmlConfig(
            buffer_entries=buffer_entries,
            flush_policy=draw(st.sampled_from(["xen", "kvm", "periodic"])),
            flush_interval_us=draw(st.sampled_from([2.0, 15.0])),
        ),
        superpage=SuperpageConfig(policy=superpage, recoalesce_on_stop=draw(st.booleans())),
        tracking=tracking,
        sync=SyncConfig(drain_pml=drain, invept=invept, rearm_style=rearm_style),
        workload=WorkloadConfig(
            kind=kind,
            writes_per_s_per_vcpu=rate,
            sharing=draw(st.sampled_from(["partitioned", "shared"])),
            script=script,
            curve_periods_ms=(0.05, 0.2, 0.5),
            curve_dirty_pages=curve[0],
            curve_sampled_pages=100,
            curve_zero_pages=curve[1],
        ),
        checkpoint=CheckpointConfig(
            enabled=draw(st.sampled_from([False, False, True])), epoch_ms=draw(st.sampled_from([0.004, 0.03]))
        ),
        vram=VramConfig(
            enabled=draw(st.sampled_from([False, False, True])), start_mib=1, size_mib=2, interval_ms=0.007
        ),
        **consumer,
    )
