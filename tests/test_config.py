"""Bad input gets one clear error naming the field, the value and what is allowed."""

import subprocess
import sys

import attrs
import pytest

from pmlsim import ConfigError, GuestConfig, PmlConfig, SimConfig, WorkloadConfig, load_config
from pmlsim.config import config_from_dict


@pytest.mark.parametrize(
    ("data", "field", "allowed"),
    [
        ({"pml": {"buffer_entries": 0}}, "pml.buffer_entries", "[1, 65536]"),
        ({"pml": {"buffer_entries": 65537}}, "pml.buffer_entries", "[1, 65536]"),
        ({"pml": {"flush_policy": "linux"}}, "pml.flush_policy", "xen, kvm, periodic"),
        ({"pml": {"flush_interval_us": 0}}, "pml.flush_interval_us", "[0.001"),
        ({"workload": {"writes_per_s_per_vcpu": -5}}, "workload.writes_per_s_per_vcpu", "[0.0"),
        ({"workload": {"kind": "random"}}, "workload.kind", "script, uniform"),
        ({"superpage": {"policy": "split"}}, "superpage.policy", "naive, mark-whole"),
        ({"guest": {"vcpus": 0}}, "guest.vcpus", "[1, 64]"),
        ({"guest": {"vcpus": 65}}, "guest.vcpus", "[1, 64]"),
        ({"guest": {"memory_mib": 3, "layout": "2m"}}, "guest.memory_mib", "multiple of 2 MiB"),
        ({"guest": {"memory_mib": 1536, "layout": "1g"}}, "guest.memory_mib", "multiple of 1024 MiB"),
        ({"guest": {"layout": "mixed", "fraction_1g": 0.7, "fraction_2m": 0.5}}, "guest.fraction_2m", "<= 1"),
        (
            {"guest": {"layout": "mixed", "ranges": [{"start_mib": 1, "end_mib": 4, "leaf": "2m"}]}},
            "guest.ranges[0]",
            "aligned",
        ),
        (
            {"guest": {"layout": "mixed", "ranges": [{"start_mib": 0, "end_mib": 2048, "leaf": "2m"}]}},
            "guest.ranges[0]",
            "end_mib <= 1024",
        ),
        ({"collector": {"interval_us": -1}}, "collector.interval_us", "[0.001"),
        ({"duration_ms": 0}, "duration_ms", "(0.0"),
        ({"engine": "turbo"}, "engine", "fast, reference"),
        ({"seed": -1}, "seed", "[0,"),
        ({"seed": "abc"}, "seed", "integer"),
        ({"pml": {"buffer_size": 4}}, "pml.buffer_size", "unknown setting"),
        ({"colector": {}}, "colector", "unknown setting"),
        ({"costs": {"exit_roundtrip_ns": -1}}, "costs.exit_roundtrip_ns", "[0,"),
        ({"workload": {"kind": "script"}}, "workload.path", "needs workload.path"),
    ],
)
def test_bad_value_is_rejected_naming_field_and_allowed_range(data, field, allowed):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.field == field
    assert allowed in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("script", "field"),
    [
        ([(0, 0, 4 << 20)], "workload.script[0].gpa"),
        ([(0, 0, 0), (10, 2, 0)], "workload.script[1].vcpu"),
        ([(-1, 0, 0)], "workload.script[0].time_ns"),
    ],
)
def test_script_write_beyond_memory_or_vcpus_is_rejected(script, field):
    with pytest.raises(ConfigError) as info:
        SimConfig(guest=GuestConfig(memory_mib=4, vcpus=2), workload=WorkloadConfig(kind="script", script=script))
    assert info.value.field == field


def test_csv_line_that_does_not_parse_is_reported_with_its_line_number(tmp_path):
    from pmlsim import simulate

    csv = tmp_path / "w.csv"
    csv.write_text("time_ns,vcpu,gpa\n100,0,0x1000\n200,zero,0x2000\n")
    cfg = SimConfig(guest=GuestConfig(memory_mib=4, vcpus=1), workload=WorkloadConfig(kind="script", path=str(csv)))
    with pytest.raises(ConfigError) as info:
        simulate(cfg)
    assert info.value.field == f"{csv} line 3"


def test_csv_write_beyond_guest_memory_names_line_and_field(tmp_path):
    from pmlsim import simulate

    csv = tmp_path / "w.csv"
    csv.write_text("time_ns,vcpu,gpa\n100,0,0x1000\n200,0,0x400000\n")
    cfg = SimConfig(guest=GuestConfig(memory_mib=4, vcpus=1), workload=WorkloadConfig(kind="script", path=str(csv)))
    with pytest.raises(ConfigError) as info:
        simulate(cfg)
    assert info.value.field == f"{csv} line 3.gpa"


def test_toml_file_and_set_overrides_load(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        'seed = 3\n[guest]\nmemory_mib = 64\nlayout = "mixed"\n[[guest.ranges]]\n'
        'start_mib = 0\nend_mib = 32\nleaf = "2m"\n[pml]\nflush_policy = "xen"\n'
    )
    c = load_config(f, ["pml.buffer_entries=128", "workload.kind=zipf", "sync.invept=false"])
    assert (c.seed, c.guest.memory_mib, c.pml.flush_policy, c.pml.buffer_entries) == (3, 64, "xen", 128)
    assert c.workload.kind == "zipf" and c.sync.invept is False
    assert c.guest.leaf_ranges() == [(0, 32 * 256, "2m")]


def test_attrs_evolve_validates_variants():
    base = SimConfig()
    assert attrs.evolve(base.pml, buffer_entries=64).buffer_entries == 64
    with pytest.raises(ConfigError):
        attrs.evolve(base.pml, buffer_entries=0)
    with pytest.raises(ConfigError):
        PmlConfig(flush_policy="nope")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pmlsim", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--set", "pml.buffer_entries=0"],
        ["run", "--set", "guest.memory_mib=1000", "--set", "guest.layout=1g"],
        ["run", "--set", "pml.flush_policy=foo"],
        ["run", "/nonexistent/config.toml"],
        ["run", "--set", "novalue"],
    ],
)
def test_cli_bad_input_prints_one_line_and_exits_2(args):
    p = _cli(*args)
    assert p.returncode == 2
    assert p.stderr.startswith("pmlsim: error: ")
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
