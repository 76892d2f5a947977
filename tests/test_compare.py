"""pmlsim compare: the same workload and seed under each tracking mechanism."""

import subprocess
import sys

import pytest

from pmlsim import ConfigError, GuestConfig, MigrationConfig, SimConfig, WorkloadConfig
from pmlsim.compare import compare, parse_mechanisms, table

CONFIG = SimConfig(
    seed=4,
    guest=GuestConfig(memory_mib=128, vcpus=2),
    workload=WorkloadConfig(kind="hotcold", writes_per_s_per_vcpu=2e5),
    migration=MigrationConfig(bandwidth_mbit_s=1000, downtime_limit_ms=200),
)


def test_every_mechanism_migrates_the_same_workload_without_loss():
    rows = dict(compare(CONFIG, ["pml", "write-protect", "dirty-ring", "hdbss"]))
    assert all(r.migration.converged and r.lost_pages == 0 for r in rows.values())
    assert rows["write-protect"].exits["ept_violation"] > 100 * rows["pml"].exits["pml_full"]
    assert rows["pml"].pml_entries_logged and not rows["write-protect"].pml_entries_logged


def test_on_4k_leaves_hdbss_behaves_as_pml_but_names_its_full_exit_differently():
    rows = dict(compare(CONFIG, ["pml", "hdbss"]))
    pml, hdbss = rows["pml"].to_dict(), rows["hdbss"].to_dict()
    assert hdbss["exits"].pop("hdbss_full") == pml["exits"].pop("pml_full")
    for d in (pml, hdbss):
        for k in ("wall_time_s", "config", "per_vcpu", "sim_events"):  # not the engine's work
            d.pop(k)
    assert pml == hdbss


def test_table_and_cli():
    text = table(compare(CONFIG, ["pml", "write-protect"]))
    assert text.splitlines()[0].startswith("mechanism") and "write-protect" in text
    p = subprocess.run(
        [sys.executable, "-m", "pmlsim", "compare", "--set", "guest.memory_mib=64", "--mechanisms", "pml,hdbss"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "hdbss" in p.stdout and "lost pages" in p.stdout


@pytest.mark.parametrize("text", ["pml,hdbs", "", " , "])
def test_unknown_mechanism_is_refused(text):
    with pytest.raises(ConfigError) as info:
        parse_mechanisms(text)
    assert info.value.field == "--mechanisms"
