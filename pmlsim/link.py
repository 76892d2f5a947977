"""A network link shared by several migration streams (``simulate_many``).

The link sends one page at a time, at ``bandwidth_mbit_s``, and serves the streams with pages
waiting by deficit round robin (Shreedhar and Varghese, SIGCOMM 1995): each visit adds a quantum
of bytes to the stream's deficit and sends that stream's next pages, back to back, while they
fit in it; a stream with nothing left waiting leaves the round and its deficit is reset. The
quantum is ``quantum_pages`` pages of the largest page on the link (4 KiB plus header), so
streams with equal headers take turns of exactly ``quantum_pages`` pages and streams with
different headers get equal bytes. The default, 64 pages, is how often QEMU's
``ram_save_iterate`` looks at the clock (``if ((i & 63) == 0)``), so one turn is as long as
QEMU goes without checking its 50 ms iteration limit.

A page's content is read when it starts down the wire, as on a link of its own
(``migration.py``); a turn of k pages that starts at t sends page i at t + floor(i x page time)
and ends at t + ceil(k x page time), so each turn rounds up by under 1 ns.

A request (the pages a migration wants to send now) may carry a deadline, ``until``: the
request ends with the first of its turns that ends at or after it, and returns the pages sent
so far (QEMU looks at the clock after each 64 pages it has sent, and stops its iteration once
50 ms, MAX_WAIT, have passed). With several streams an iteration thus holds fewer pages, as it
does in QEMU on a shared link.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import simpy

from pmlsim.config import PAGE_SIZE
from pmlsim.trace import Trace

#: pages per turn (of the largest page on the link): QEMU checks its clock every 64 pages
DEFAULT_QUANTUM_PAGES = 64
MAX_QUANTUM_PAGES = 1 << 20


class Stream:
    """One migration's traffic on the link: where its pages come from and where they go."""

    def __init__(self, link: Link, guest, header_bytes: int, sink, trace: Trace):
        self.link = link
        self.guest = guest
        self.page_bytes = PAGE_SIZE + header_bytes
        self.ns_per_page = self.page_bytes * 8 * 1000.0 / link.bandwidth_mbit_s
        self.sink = sink
        self.trace = trace
        self.deficit = 0
        #: the request being served: its pages, how many are sent, its deadline and its end
        self.pages = np.zeros(0, np.int64)
        self.sent = 0
        self.until: int | None = None
        self.done: simpy.Event | None = None

    def transmit(self, pages: np.ndarray, until: int | None = None):
        """Send ``pages`` in order (a SimPy generator); returns how many were sent, a prefix.

        With ``until``, sending stops at the end of the first turn that ends at or after it."""
        assert self.done is None, "one request at a time per stream"
        self.pages, self.sent, self.until = pages, 0, until
        self.done = self.link.env.event()
        self.link._enqueue(self)
        sent = yield self.done
        return sent


class Link:
    """The shared link: a SimPy process that serves the streams' requests in turns."""

    def __init__(self, env: simpy.Environment, bandwidth_mbit_s: float, quantum_bytes: int):
        self.env = env
        self.bandwidth_mbit_s = bandwidth_mbit_s
        self.quantum_bytes = quantum_bytes
        self._active: deque[Stream] = deque()
        self._wake: simpy.Event | None = None
        env.process(self._run())

    def stream(self, guest, header_bytes: int, sink, trace: Trace) -> Stream:
        s = Stream(self, guest, header_bytes, sink, trace)
        assert self.quantum_bytes >= s.page_bytes, "a quantum must hold the largest page"
        return s

    def _enqueue(self, s: Stream) -> None:
        self._active.append(s)  # a stream that starts waiting joins the end of the round
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed()

    def _finish(self, s: Stream) -> None:
        s.deficit = 0
        done, s.done = s.done, None
        done.succeed(s.sent)

    def _run(self):
        env = self.env
        while True:
            if not self._active:
                self._wake = env.event()
                yield self._wake
                continue
            s = self._active.popleft()
            s.deficit += self.quantum_bytes
            k = min(len(s.pages) - s.sent, s.deficit // s.page_bytes)  # >= 1: a quantum holds a page
            pages = s.pages[s.sent : s.sent + k]
            t0 = env.now
            s.guest.read_pages(t0 + np.floor(np.arange(k) * s.ns_per_page).astype(np.int64), pages, s.sink)
            s.trace.emit(t0, "send", pages=k)
            yield env.timeout(int(np.ceil(k * s.ns_per_page)))
            s.sent += k
            s.deficit -= k * s.page_bytes
            if s.sent == len(s.pages) or (s.until is not None and env.now >= s.until):
                self._finish(s)  # all sent, or its time is up: the migration decides what next
            else:
                self._active.append(s)
