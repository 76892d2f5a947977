"""Pre-copy live migration racing the vCPUs and the hypervisor.

Round 0 sends every page (QEMU sets the whole migration bitmap; Xen's first iteration sends all
of the p2m). Each later round starts with a dirty-log sync (the flush policy's protocol, read and
clear the bitmap, re-arm the collected pages, INVEPT), then sends the pages over a link of
``bandwidth_mbit_s``; each page's content (its version) is taken at the instant it starts down
the wire. Stop-and-copy pauses every vCPU, makes a final sync that drains every PML buffer, and
sends the rest; downtime runs from the pause to the resume at the destination, whose memory is
then compared page by page with the guest's.

Stop rules (docs/migration.md has the sources):

* ``qemu`` (``migration_iteration_run``): send for ``iteration_ms`` at a time; when the pages
  still queued fit under threshold = measured bandwidth x ``downtime_limit_ms``, sync (the exact
  estimate); switch over when the pending bytes after that sync are under the threshold. No
  iteration cap.
* ``xen`` (``xc_domain_save``): whole passes; switch over after 30 iterations, or when an
  iteration sent fewer than 50 pages, or when more than 3x guest memory has been sent.
* ``qemu-pass``: whole passes with QEMU's test at the end of each: switch over when the pages
  the sync found fit under the threshold (at the start: all of memory). This is the loop QEMU's
  migration-time predictor (``scripts/predict_migration.py``) assumes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import numpy as np
import simpy

from pmlsim.config import PAGE_SIZE, SimConfig
from pmlsim.guest import Guest
from pmlsim.hypervisor import Hypervisor, SyncRecord
from pmlsim.link import Link
from pmlsim.memory import GuestMemory
from pmlsim.trace import Trace
from pmlsim.verify import ConsumerCopy


@attrs.frozen
class Round:
    """One round: from one sync (or the start) to the next, and what it found and sent."""

    index: int
    start_ns: int
    end_ns: int
    pages_sent: int
    bytes_sent: int
    #: pages collected by the sync that ended the round
    dirty_pages_found: int
    #: of those, pages not already waiting to be sent
    new_dirty_pages: int
    #: PML entries still in vCPU buffers when that sync read the bitmap
    in_flight_entries: int
    #: dirty pages found per second since the previous sync (None: no sync ended the round)
    dirty_rate_pages_per_s: float | None
    throttle_pct: int
    stop_and_copy: bool = False


@attrs.frozen
class MigrationResult:
    rounds: tuple[Round, ...]
    total_pages_sent: int
    bytes_sent: int
    migration_time_ns: int
    downtime_ns: int | None
    converged: bool
    stop_reason: str
    verified: bool
    lost_pages: int
    #: BLAKE2b of the destination's page versions: equal digests, equal destination memory
    destination_digest: str

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["rounds"] = [attrs.asdict(r) for r in self.rounds]
        d["verification"] = {"checked": self.verified, "lost_pages": self.lost_pages}
        return d


class Migration:
    """The migration thread: a SimPy process that sends pages and syncs the dirty log."""

    def __init__(
        self,
        env: simpy.Environment,
        config: SimConfig,
        hv: Hypervisor,
        guest: Guest,
        memory: GuestMemory,
        trace: Trace,
        link: Link | None = None,
    ):
        self.env = env
        self.config = config
        self.mc = config.migration
        self.hv = hv
        self.guest = guest
        self.memory = memory
        self.trace = trace
        # the destination starts empty: a page never received is -1, older than any version
        self.dest = ConsumerCopy(config, hv, memory, trace, initial_version=-1, consumer="migration")
        hv.dirty_log.view("migration")
        self.dest.rearms_after_taking = self.mc.rearm == "after-send"
        n = len(memory.version)
        self.n_pages = n
        self.page_bytes = PAGE_SIZE + self.mc.page_header_bytes
        self.ns_per_page = self.mc.page_wire_bits * 1000.0 / self.mc.bandwidth_mbit_s
        self.queue = np.arange(n, dtype=np.int64)
        self.pos = 0
        self.queued = np.ones(n, dtype=bool)
        #: rearm=after-send: pages collected by a sync whose D bits are still to be cleared
        self.unarmed = np.zeros(n, dtype=bool)
        self.rounds: list[Round] = []
        self.pages_sent = 0
        self.throttle_pct = 0
        self.result: MigrationResult | None = None
        self.stall_at_pause: list[int] = []
        #: the guest ran (at the source) until here: the pause, or the end of a failed migration
        self.guest_run_end_ns = 0
        self._start = 0
        self._round_start = 0
        self._round_pages = 0
        self._last_sync = 0
        self._bw_bytes_per_ns = self.mc.bandwidth_mbit_s / 8000.0
        self._bytes_at_last_sync = 0
        self._period_start = 0
        self._period_bytes = 0
        self._period_new_dirty = 0
        self._high_count = 0
        self._delivered = 0
        #: None: the link is this migration's own (``simulate``); else its stream on a shared link
        self.stream = link.stream(guest, self.mc.page_header_bytes, self._receive, trace) if link else None
        self._iteration_ns = round(self.mc.iteration_ms * 1e6)

    # ------------------------------------------------------------ the process
    def run(self, duration_ns: int):
        """Migrate: rounds until the stop rule says switch over, or until the deadline."""
        self._start = self._round_start = self._last_sync = self._period_start = self.env.now
        max_ns = self.mc.max_time_ms
        deadline = self._start + (round(max_ns * 1e6) if max_ns is not None else duration_ns)
        if self.mc.stop_rule == "qemu":
            yield from self._qemu(deadline)
        elif self.mc.stop_rule == "qemu-pass":
            yield from self._qemu_pass(deadline)
        else:
            yield from self._xen(deadline)

    @property
    def unsent(self) -> int:
        return len(self.queue) - self.pos

    def _qemu(self, deadline: int):
        mc = self.mc
        chunk = max(1, int(mc.iteration_ms * 1e6 / self.ns_per_page))
        while True:
            threshold = self._bw_bytes_per_ns * mc.downtime_limit_ms * 1e6
            if self.unsent * self.page_bytes > threshold:
                # the cheap estimate (pages still queued) is above the threshold: keep sending
                if self.env.now >= deadline:
                    return self._give_up()
                yield from self._send(min(self.unsent, chunk, self._pages_before(deadline)), deadline)
                continue
            # the estimate is under the threshold: sync for the exact figure
            yield from self._sync()
            if self.unsent * self.page_bytes < self._bw_bytes_per_ns * mc.downtime_limit_ms * 1e6:
                return (yield from self._stop_and_copy("downtime-limit"))
            if self.env.now >= deadline:
                return self._give_up()

    def _qemu_pass(self, deadline: int):
        """QEMU's downtime test made once per whole pass, the model of QEMU's migration-time
        predictor (pmlsim.theory.predict_migration): switch over as soon as the queued pages
        fit in threshold = measured bandwidth x downtime limit (at the start, or after the sync
        that ends a pass); otherwise send them all, then sync."""
        mc = self.mc
        chunk = max(1, int(mc.iteration_ms * 1e6 / self.ns_per_page))
        while True:
            if self.unsent * self.page_bytes <= self._bw_bytes_per_ns * mc.downtime_limit_ms * 1e6:
                return (yield from self._stop_and_copy("downtime-limit"))
            while self.unsent:
                if self.env.now >= deadline:
                    return self._give_up()
                yield from self._send(min(self.unsent, chunk, self._pages_before(deadline)))
            if self.env.now >= deadline:
                return self._give_up()
            yield from self._sync()

    def _xen(self, deadline: int):
        mc = self.mc
        chunk = max(1, int(mc.iteration_ms * 1e6 / self.ns_per_page))
        iterations = 0
        while True:
            sent_before = self.pages_sent
            while self.unsent:
                if self.env.now >= deadline:
                    return self._give_up()
                yield from self._send(min(self.unsent, chunk, self._pages_before(deadline)), deadline)
            iterations += 1
            sent_this_iter = self.pages_sent - sent_before
            if iterations >= mc.xen_max_iterations:
                return (yield from self._stop_and_copy("xen-max-iterations"))
            if sent_this_iter < mc.xen_min_dirty_pages:
                return (yield from self._stop_and_copy("xen-few-dirty-pages"))
            if self.pages_sent > mc.xen_max_factor * self.n_pages:
                return (yield from self._stop_and_copy("xen-max-factor"))
            if self.env.now >= deadline:
                return self._give_up()
            yield from self._sync()

    def _pages_before(self, deadline: int) -> int:
        return max(1, int((deadline - self.env.now) / self.ns_per_page))

    # ------------------------------------------------------------ sending
    def _send(self, n: int, deadline: int | None = None):
        """Send the next ``n`` queued pages back to back; each is copied as it starts.

        On a shared link the pages go in the link's turns, and sending stops at the end of
        ``iteration_ms`` (or at ``deadline``); the pages not sent by then go back to the head of
        the queue. (``n`` fills ``iteration_ms`` at the full link rate, so on a link of its own
        the migration always sends all ``n``.)"""
        env = self.env
        pages = self.queue[self.pos : self.pos + n]
        self.pos += n
        self.queued[pages] = False
        if self.stream is None:
            t0 = env.now
            times = t0 + np.floor(np.arange(n) * self.ns_per_page).astype(np.int64)
            self.guest.read_pages(times, pages, self._receive)
            self.trace.emit(t0, "send", pages=n)
            yield env.timeout(int(np.ceil(n * self.ns_per_page)))
        else:
            until = None if deadline is None else min(env.now + self._iteration_ns, deadline)
            sent = yield from self.stream.transmit(pages, until)
            if sent < n:
                self.pos -= n - sent
                self.queued[pages[sent:]] = True
                pages, n = pages[:sent], sent
        self.pages_sent += n
        self._round_pages += n
        if self.mc.rearm == "after-send":
            # the unsafe order: collected pages were copied before their D bits were cleared
            todo = pages[self.unarmed[pages]]
            if len(todo):
                self.unarmed[todo] = False
                yield from self.hv.rearm(todo)

    def _receive(self, pages: np.ndarray, versions: np.ndarray, times: np.ndarray) -> None:
        """Pages read at the source arrive at the destination (unless a fault drops one)."""
        drop = self.hv.faults.drop_sent_page
        if drop is not None and self._delivered <= drop < self._delivered + len(pages):
            keep = np.arange(len(pages)) != drop - self._delivered
            pages, versions, times = pages[keep], versions[keep], times[keep]
            self._delivered += 1
        self._delivered += len(pages)
        self.dest.take(pages, versions, times)

    def _sync(self, final: bool = False):
        """Sync the dirty log, queue what it found, and close the round."""
        env = self.env
        rec: SyncRecord = yield from self.hv.sync(
            final=final, rearm=self.mc.rearm == "before-send", consumer="migration"
        )
        if rec.paused and not final:
            self.hv.unpause_all()  # Xen's sync paused the domain; the domctl returns
        self.dest.note_sync(rec)
        found = rec.collected
        if self.mc.rearm == "after-send":
            self.unarmed[found] = True
        new = found[~self.queued[found]]
        self.queue = np.concatenate([self.queue[self.pos :], new])
        self.pos = 0
        self.queued[new] = True
        elapsed = env.now - self._last_sync
        sent_bytes = self.pages_sent * self.page_bytes - self._bytes_at_last_sync
        if sent_bytes > 0 and elapsed > 0:
            # QEMU's threshold uses the bandwidth measured since the last update
            self._bw_bytes_per_ns = sent_bytes / elapsed
        self._close_round(len(found), len(new), rec.in_flight_entries, elapsed, final)
        self._round_start = self._last_sync = env.now
        self._round_pages = 0
        self._bytes_at_last_sync = self.pages_sent * self.page_bytes
        self._period_new_dirty += len(new)
        if self.mc.auto_converge and not final:
            self._maybe_throttle()
        return rec

    def _close_round(self, found: int, new: int, in_flight: int, elapsed: int | None, final: bool) -> None:
        """Record the round that ends now; ``elapsed=None``: no sync ended it (no dirty rate)."""
        self.rounds.append(
            Round(
                index=len(self.rounds),
                start_ns=self._round_start,
                end_ns=self.env.now,
                pages_sent=self._round_pages,
                bytes_sent=self._round_pages * self.page_bytes,
                dirty_pages_found=found,
                new_dirty_pages=new,
                in_flight_entries=in_flight,
                dirty_rate_pages_per_s=None if final or elapsed is None else found / elapsed * 1e9 if elapsed else 0.0,
                throttle_pct=self.throttle_pct,
                stop_and_copy=final,
            )
        )

    def _maybe_throttle(self) -> None:
        """QEMU ``migration_trigger_throttle``: dirtied bytes above the threshold share of the
        transferred bytes in two periods make ``mig_throttle_guest_down`` raise the throttle."""
        mc, now = self.mc, self.env.now
        if now - self._period_start < mc.throttle_period_ms * 1e6:
            return
        xfer = self.pages_sent * self.page_bytes - self._period_bytes
        dirty = self._period_new_dirty * PAGE_SIZE
        if dirty > xfer * mc.throttle_trigger_threshold_pct / 100:
            self._high_count += 1
            if self._high_count >= 2:
                self._high_count = 0
                if self.throttle_pct == 0:
                    self.throttle_pct = min(mc.throttle_initial_pct, mc.throttle_max_pct)
                else:
                    self.throttle_pct = min(self.throttle_pct + mc.throttle_increment_pct, mc.throttle_max_pct)
                for v in self.hv.vcpus:
                    v.set_speed(100 - self.throttle_pct)
                self.trace.emit(now, "throttle", pct=self.throttle_pct)
        self._period_start = now
        self._period_bytes = self.pages_sent * self.page_bytes
        self._period_new_dirty = 0

    # ------------------------------------------------------------ the end
    def _stop_and_copy(self, reason: str):
        env = self.env
        t_pause = env.now
        self.stall_at_pause = [v.stall_until(t_pause) for v in self.hv.vcpus]
        self.guest_run_end_ns = t_pause
        self.trace.emit(t_pause, "stop_and_copy", reason=reason)
        if self._round_pages:
            # a pass that ended without a sync (Xen's last iteration) is a round of its own
            self._close_round(0, 0, 0, None, final=False)
            self._round_start = t_pause
            self._round_pages = 0
        # the stop-and-copy round: pause, final sync (drains every buffer), send the rest
        yield from self._sync(final=True)
        sent = 0
        if self.unsent:
            sent = self.unsent
            yield from self._send(sent)
        last = self.rounds[-1]
        self.rounds[-1] = attrs.evolve(
            last, start_ns=t_pause, end_ns=env.now, pages_sent=sent, bytes_sent=sent * self.page_bytes
        )
        # every vCPU is paused: the destination must hold exactly the guest's memory
        self.dest.check(self.memory.version, None, env.now)
        self._finish(converged=True, reason=reason, downtime=env.now - t_pause, verified=True)

    def _give_up(self) -> None:
        """``max_time`` reached before switch-over: the migration did not converge."""
        if self._round_pages:
            self._close_round(0, 0, 0, None, final=False)  # the round cut short
        self.stall_at_pause = [v.stall_until(self.env.now) for v in self.hv.vcpus]
        self.guest_run_end_ns = self.env.now
        self.trace.emit(self.env.now, "did_not_converge")
        self._finish(converged=False, reason="did-not-converge", downtime=None, verified=False)

    def _finish(self, converged: bool, reason: str, downtime: int | None, verified: bool) -> None:
        self.result = MigrationResult(
            rounds=tuple(self.rounds),
            total_pages_sent=self.pages_sent,
            bytes_sent=self.pages_sent * self.page_bytes,
            migration_time_ns=self.env.now - self._start,
            downtime_ns=downtime,
            converged=converged,
            stop_reason=reason,
            verified=verified,
            lost_pages=len(self.dest.lost),
            destination_digest=hashlib.blake2b(self.dest.version.tobytes(), digest_size=16).hexdigest(),
        )
