"""A dirty-log consumer that syncs periodically and verifies what it collects.

The collector keeps a *copy*: for every page it collected, the page's version taken right after
the sync re-armed logging (as a migration thread copies a page after GET_DIRTY_LOG returns).
Verification, modelled on KVM's ``dirty_log_test``:

* after a collection made with every vCPU stopped and drained (every Xen sync, every final
  sync), the copy must equal guest memory for every page;
* while vCPUs run, a page may arrive at most one collection late: at collection k, every write
  that retired before the bitmap read of collection k-1 must be in the copy.

A violation is a lost page (pmlsim.verify), reported with its GFN, the vCPU and time of the
write that was lost, and the cause.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import attrs
import numpy as np
import simpy

from pmlsim.config import SimConfig
from pmlsim.hypervisor import Hypervisor
from pmlsim.memory import GuestMemory, MemorySnapshot
from pmlsim.trace import Trace
from pmlsim.verify import ConsumerCopy, LostPage


def every_period(consumer, period_ns: int, duration_ns: int, step: Callable[[bool], Generator]):
    """The schedule of a periodic consumer (collector, checkpointer): ``step(False)`` at every
    multiple of ``period_ns`` before ``duration_ns`` (a step still running at a tick skips it),
    then ``step(True)`` at ``duration_ns``; nothing more once ``consumer.stopping`` is set
    (another consumer ended the run and calls the consumer's ``finish``)."""
    env = consumer.env
    k = 1
    while k * period_ns < duration_ns:
        if env.now < k * period_ns:
            yield env.timeout(k * period_ns - env.now)
            if consumer.stopping:
                return
            yield from step(False)
        k += 1
    if env.now < duration_ns:
        yield env.timeout(duration_ns - env.now)
    if not consumer.stopping:
        yield from step(True)


@attrs.frozen
class Collection:
    time_ns: int
    read_ns: int
    pages: int
    in_flight_entries: int
    late_pages: int
    lost_pages: int
    strict: bool


class Collector:
    def __init__(
        self,
        env: simpy.Environment,
        config: SimConfig,
        hv: Hypervisor,
        memory: GuestMemory,
        trace: Trace,
        name: str = "collector",
        interval_us: float | None = None,
        pages: tuple[int, int] | None = None,
    ):
        self.env = env
        self.config = config
        self.hv = hv
        self.memory = memory
        self.trace = trace
        self.name = name
        self.interval_us = config.collector.interval_us if interval_us is None else interval_us
        #: GFNs ``[first, end)`` this consumer tracks (VRAM tracking), or all of memory
        self.pages = pages or (0, len(memory.version))
        hv.dirty_log.view(name, *self.pages)
        self.copy = ConsumerCopy(config, hv, memory, trace, pages=self.pages, consumer=name)
        #: a collection in progress (the driver waits for it before a last collection)
        self.idle: simpy.Event = env.event().succeed()
        #: set when another consumer ends the run: no new periodic collection starts
        self.stopping = False
        #: called after each collection with (record, collected GFNs, memory at the read)
        self.on_collect = None
        self._prev_read: MemorySnapshot | None = None
        self._this_read: MemorySnapshot | None = None
        #: the arrays of the sparse reads, two sets in turn: a read's snapshot is kept until the
        #: collection after the next read, whose snapshot fills the other set
        self._read_buffers: list[tuple[np.ndarray, ...]] = []
        self.collections: list[Collection] = []
        self.late_pages = 0
        self.pages_collected = 0

    def run(self, duration_ns: int):
        """Collect every ``interval_us`` until ``duration_ns``, then a final stopped collection."""
        interval = max(1, round(self.interval_us * 1000))
        yield from every_period(self, interval, duration_ns, lambda last: self.collect(final=last))

    def finish(self):
        """Another consumer ended the run (a migration): a last, stopped collection."""
        self.stopping = True
        yield self.idle
        yield from self.collect(final=True)

    def _on_read(self, t_ns: int) -> None:
        if self.on_collect is not None:  # the callback gets memory as it was at the read
            self._this_read = self.memory.snapshot(t_ns)
            return
        # Only the pages this copy is behind on can be late or lost at the next collection: on
        # every other page the copy already holds the version of the read (copies only grow).
        into = self.memory.newer_buffers() if len(self._read_buffers) < 2 else self._read_buffers.pop(0)
        self._read_buffers.append(into)  # (the other set holds the previous read, still in use)
        self._this_read = self.memory.snapshot_newer(t_ns, self.copy.version, into)

    def collect(self, final: bool):
        """One collection: sync, take the collected pages' versions, verify."""
        self.idle = self.env.event()
        rec = yield from self.hv.sync(final=final, on_read=self._on_read, consumer=self.name)
        self.copy.note_sync(rec)
        pages = rec.collected
        copy = self.copy.version
        prev = self._prev_read
        strict = final or rec.drained_and_stopped
        # the copy before this collection's take, where the previous read is compared; of a
        # sparse read (the pages the copy was behind on), how many it is still behind on. Late
        # pages were behind at the previous read and are caught up now: the copy only grows, so
        # they are those behind before the take less those behind after it.
        before = n_before = None
        if prev is None:
            pass
        elif prev.pages is None:
            before = copy.copy()
        else:
            n_before = self.copy.behind_count(prev)
        self.copy.take_now(pages, self.memory.version, self.env.now)
        self.pages_collected += len(pages)
        late = lost = 0
        n_after = None
        if strict:
            lost = self.copy.check(self.memory.version, None, self.env.now)
        elif prev is not None and prev.pages is None:
            lost = self.copy.check(prev.version, prev, self.env.now)
        elif prev is not None:
            lost, n_after = self.copy.check_pages(prev, self.env.now)  # (counts in the same pass)
        if before is not None:
            late = int(np.count_nonzero((before < prev.version) & (copy >= prev.version)))
        elif n_before is not None:
            late = n_before - (self.copy.behind_count(prev) if n_after is None else n_after)
        self.late_pages += late
        self._prev_read = self._this_read
        self.collections.append(
            Collection(self.env.now, rec.read_ns, len(pages), rec.in_flight_entries, late, lost, strict)
        )
        if self.on_collect is not None:
            self.on_collect(self.collections[-1], pages, self._prev_read)
        self.trace.emit(self.env.now, "collect", pages=len(pages), late=late, lost=lost)
        if rec.paused and not final:
            self.hv.unpause_all()
        self.idle.succeed()


__all__ = ["Collection", "Collector", "LostPage"]
