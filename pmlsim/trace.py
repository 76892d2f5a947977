"""Event traces: every model event with its time, vCPU and GFN/GPA, like a waveform.

Events: ``write_logged`` (a PML entry written: ``pml_index``), ``vm_exit`` (``reason``),
``vm_entry``, ``flush`` (a PML drain: ``entries`` GFNs in the order read), ``bitmap_read``
(``pages``, ``in_flight``, ``gfns``), ``d_clear`` (``pages``, ``gfns``), ``invept``, ``split``
(a superpage leaf split: its first GFN, ``leaf``), ``kick``, ``pause``, ``collect``, ``send``
(``pages`` starting down the wire), ``stop_and_copy`` (``reason``), ``throttle`` (``pct``),
``did_not_converge``, ``lost_page`` (``cause``, ``write_time_ns``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, TextIO

FIELDS = ("time_ns", "event", "vcpu", "gfn", "gpa", "detail")


class Trace:
    """Receives events. The base class drops them (tracing off costs one attribute check)."""

    enabled = False

    def emit(self, time_ns: int, event: str, vcpu: int = -1, gfn: int = -1, **detail: Any) -> None:
        pass

    def close(self) -> None:
        pass


class ListTrace(Trace):
    """Keeps events in memory as tuples ``(time_ns, event, vcpu, gfn, detail)``: for tests."""

    enabled = True

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def emit(self, time_ns, event, vcpu=-1, gfn=-1, **detail):
        self.events.append((int(time_ns), event, int(vcpu), int(gfn), tuple(sorted(detail.items()))))

    def of(self, event: str) -> list[tuple]:
        return [e for e in self.events if e[1] == event]


class FileTrace(Trace):
    """Streams events to ``.csv`` (one row per event, detail as JSON) or ``.jsonl``."""

    enabled = True

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: TextIO = self.path.open("w", newline="")
        self._jsonl = self.path.suffix.lower() in (".jsonl", ".json")
        if not self._jsonl:
            self._csv = csv.writer(self._fh)
            self._csv.writerow(FIELDS)

    def emit(self, time_ns, event, vcpu=-1, gfn=-1, **detail):
        gpa = gfn << 12 if gfn >= 0 else -1
        det = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in detail.items()}
        if self._jsonl:
            row = {"time_ns": int(time_ns), "event": event, "vcpu": int(vcpu), "gfn": int(gfn), "gpa": int(gpa)}
            row.update(det)
            self._fh.write(json.dumps(row) + "\n")
        else:
            self._csv.writerow(
                [int(time_ns), event, int(vcpu), int(gfn), hex(gpa) if gpa >= 0 else "", json.dumps(det) if det else ""]
            )

    def close(self):
        self._fh.close()
