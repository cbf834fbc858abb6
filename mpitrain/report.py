"""What a run tells its user: progress on rank 0, timings, memory, the JSON report.

Nothing here communicates; callers gather per-rank figures with
:mod:`mpitrain.comm` and pass them in.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any, TextIO

__all__ = [
    "Progress",
    "peak_memory_bytes",
    "format_bytes",
    "format_table",
]


def peak_memory_bytes() -> int:
    """Peak resident memory of this process so far, in bytes (Linux ``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def format_bytes(n: float) -> str:
    """``1.6 GB`` style sizes (powers of 1000, like disk and network rates)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    """Progress for long work, on rank 0 only.

    On a terminal it draws a bar that redraws in place; in a batch log it
    writes a plain line per phase and at most one progress line every
    ``interval`` seconds.  Disabled (silent) with ``enabled=False``.
    """

    def __init__(
        self, enabled: bool, stream: TextIO | None = None, interval: float = 10.0
    ):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and self.stream.isatty()
        self.interval = interval
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def line(self, text: str) -> None:
        """One line: ``[   1.2 s] text``."""
        if self.enabled:
            self.stream.write(f"[{self.elapsed():7.1f} s] {text}\n")
            self.stream.flush()

    def counter(self, label: str, total: int, unit: str = "rows"):
        """Return ``update(done)`` that reports ``done`` of ``total``."""
        last = [-1.0]

        def update(done: int) -> None:
            if not self.enabled:
                return
            now = self.elapsed()
            final = done >= total
            if not final and now - last[0] < (0.1 if self.tty else self.interval):
                return
            last[0] = now
            frac = done / total if total else 1.0
            if self.tty:
                bar = "#" * int(30 * frac)
                self.stream.write(
                    f"\r[{now:7.1f} s] {label} [{bar:<30}] {done:,}/{total:,} {unit}"
                )
                if final:
                    self.stream.write("\n")
            else:
                self.stream.write(
                    f"[{now:7.1f} s] {label}: {done:,}/{total:,} {unit} ({100 * frac:.0f}%)\n"
                )
            self.stream.flush()

        return update


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain left-aligned text table."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
