"""Same config and seed: the same result, in this process and in another."""

import json
import subprocess
import sys

import attrs

from pmlsim import CollectorConfig, GuestConfig, MigrationConfig, SimConfig, WorkloadConfig, simulate

CONFIG = SimConfig(
    seed=1234,
    duration_ms=0.5,
    guest=GuestConfig(memory_mib=32, vcpus=3, layout="mixed", fraction_2m=0.5),
    workload=WorkloadConfig(kind="zipf", writes_per_s_per_vcpu=3e6, sharing="shared"),
    collector=CollectorConfig(enabled=True),
    migration=MigrationConfig(enabled=False),
)


def _strip(d):
    d = dict(d)
    d.pop("wall_time_s")
    return d


def test_same_seed_same_json_in_one_process():
    assert _strip(simulate(CONFIG).to_dict()) == _strip(simulate(CONFIG).to_dict())


def test_different_seed_different_writes():
    other = simulate(attrs.evolve(CONFIG, seed=1235)).to_dict()
    assert _strip(other)["per_vcpu"] != _strip(simulate(CONFIG).to_dict())["per_vcpu"]


def test_same_seed_same_json_across_processes():
    code = (
        "import json; from pmlsim import *;"
        "c = SimConfig(seed=1234, duration_ms=0.5, guest=GuestConfig(memory_mib=32, vcpus=3, layout='mixed',"
        " fraction_2m=0.5), workload=WorkloadConfig(kind='zipf', writes_per_s_per_vcpu=3e6, sharing='shared'),"
        " collector=CollectorConfig(enabled=True), migration=MigrationConfig(enabled=False));"
        "d = simulate(c).to_dict(); d.pop('wall_time_s'); print(json.dumps(d))"
    )
    outs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(h), "PATH": ""},
        ).stdout
        for h in (1, 2)
    ]
    assert outs[0] == outs[1]
    assert json.loads(outs[0]) == json.loads(json.dumps(_strip(simulate(CONFIG).to_dict())))
