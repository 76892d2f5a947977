"""pmlsim: a discrete-event simulator of Intel PML dirty-page logging."""

from pmlsim.collector import LostPage
from pmlsim.config import (
    CollectorConfig,
    ConfigError,
    CostConfig,
    GuestConfig,
    LeafRange,
    PmlConfig,
    SimConfig,
    SuperpageConfig,
    SyncConfig,
    WorkloadConfig,
    load_config,
)
from pmlsim.hypervisor import Faults
from pmlsim.results import Result
from pmlsim.sim import simulate
from pmlsim.trace import FileTrace, ListTrace, Trace
from pmlsim.vcpu import VmExit

__all__ = [
    "CollectorConfig",
    "ConfigError",
    "CostConfig",
    "Faults",
    "FileTrace",
    "GuestConfig",
    "LeafRange",
    "ListTrace",
    "LostPage",
    "PmlConfig",
    "Result",
    "SimConfig",
    "SuperpageConfig",
    "SyncConfig",
    "Trace",
    "VmExit",
    "WorkloadConfig",
    "load_config",
    "simulate",
]
__version__ = "0.1.0"
