"""pmlsim: a discrete-event simulator of Intel PML dirty-page logging."""

from pmlsim.config import (
    CollectorConfig,
    ConfigError,
    CostConfig,
    GuestConfig,
    LeafRange,
    MigrationConfig,
    PmlConfig,
    SimConfig,
    SuperpageConfig,
    SyncConfig,
    TrackingConfig,
    WorkloadConfig,
    load_config,
)
from pmlsim.hypervisor import Faults
from pmlsim.migration import MigrationResult, Round
from pmlsim.results import Result
from pmlsim.sim import simulate, simulate_many
from pmlsim.trace import FileTrace, ListTrace, Trace
from pmlsim.vcpu import VmExit
from pmlsim.verify import LostPage

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
    "MigrationConfig",
    "MigrationResult",
    "PmlConfig",
    "Result",
    "Round",
    "SimConfig",
    "SuperpageConfig",
    "SyncConfig",
    "Trace",
    "TrackingConfig",
    "VmExit",
    "WorkloadConfig",
    "load_config",
    "simulate",
    "simulate_many",
]
__version__ = "0.1.0"
