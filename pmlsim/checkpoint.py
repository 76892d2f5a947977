"""Checkpointing (Remus/COLO style): every epoch, pause the guest, sync the dirty log, copy the
dirty pages to a backup image, resume. The backup must equal the guest at every epoch."""

from __future__ import annotations

import attrs
import simpy

from pmlsim.collector import every_period
from pmlsim.config import SimConfig
from pmlsim.hypervisor import Hypervisor
from pmlsim.memory import GuestMemory
from pmlsim.trace import Trace
from pmlsim.verify import ConsumerCopy

NAME = "checkpoint"


@attrs.frozen
class Epoch:
    time_ns: int
    pages: int
    #: from the pause to the resume: what the guest loses per epoch
    pause_ns: int
    lost_pages: int


@attrs.frozen
class CheckpointResult:
    epochs: tuple[Epoch, ...]
    pause_mean_ns: float
    pause_max_ns: int
    pages_copied: int
    lost_pages: int

    def to_dict(self) -> dict:
        d = attrs.asdict(self)
        d["epochs"] = len(self.epochs)
        return d


class Checkpointer:
    """The backup: a SimPy process that checkpoints every ``checkpoint.epoch_ms``."""

    def __init__(self, env: simpy.Environment, config: SimConfig, hv: Hypervisor, memory: GuestMemory, trace: Trace):
        self.env = env
        self.config = config
        self.hv = hv
        self.memory = memory
        self.trace = trace
        hv.dirty_log.view(NAME)
        # the backup starts as the guest was when logging started: every page at version 0
        self.backup = ConsumerCopy(config, hv, memory, trace, consumer=NAME)
        self.epochs: list[Epoch] = []
        self.idle: simpy.Event = env.event().succeed()
        self.stopping = False

    def run(self, duration_ns: int):
        """Checkpoint every epoch; the last epoch, at the end of the run, leaves the guest paused."""
        epoch = max(1, round(self.config.checkpoint.epoch_ms * 1e6))
        yield from every_period(self, epoch, duration_ns, lambda last: self.checkpoint(resume=not last))

    def finish(self):
        """Another consumer ended the run (a migration): a last checkpoint of the stopped guest."""
        self.stopping = True
        yield self.idle
        yield from self.checkpoint(resume=False)

    def checkpoint(self, resume: bool):
        """Pause, sync (every buffer drained), copy the dirty pages, check, resume."""
        self.idle = self.env.event()
        t_pause = self.env.now
        rec = yield from self.hv.sync(final=True, consumer=NAME)  # pauses every vCPU first
        pages = rec.collected
        cost = len(pages) * self.config.checkpoint.copy_ns_per_page
        if cost:
            yield self.env.timeout(cost)
        self.backup.take_now(pages, self.memory.version, self.env.now)
        lost = self.backup.check(self.memory.version, None, self.env.now)  # vCPUs are paused
        self.epochs.append(Epoch(self.env.now, len(pages), self.env.now - t_pause, lost))
        self.trace.emit(self.env.now, "checkpoint", pages=len(pages), pause_ns=self.env.now - t_pause)
        if resume:
            self.hv.unpause_all()
        self.idle.succeed()

    def result(self) -> CheckpointResult:
        pauses = [e.pause_ns for e in self.epochs]
        return CheckpointResult(
            epochs=tuple(self.epochs),
            pause_mean_ns=sum(pauses) / len(pauses) if pauses else 0.0,
            pause_max_ns=max(pauses, default=0),
            pages_copied=sum(e.pages for e in self.epochs),
            lost_pages=len(self.backup.lost),
        )
