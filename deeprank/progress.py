"""The one progress display of deeprank: a self-overwriting status line on stderr.

Embedding, loading and evaluation count items (:meth:`Progress.advance`); training shows its own
status text with the fraction of its budget spent (:meth:`Progress.show`). The line is redrawn at
most every ``interval`` seconds, so a fast loop pays almost nothing for it, and nothing is written
when it is disabled or stderr is gone (``pythonw``, closed pipes).
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """A status line ``label: [#####.....]  50% text`` on stderr.

    Args:
        label: what is progressing (``"embedding"``, ``"training"``).
        total: items expected, for :meth:`advance`; ``None`` when progress is shown by fraction.
        enabled: ``False`` makes every call a no-op (``--no-progress``).
        interval: least seconds between two redraws.
    """

    def __init__(self, label: str, total: int | None = None, *, enabled: bool = True, interval: float = 0.25):
        self.label, self.total, self.done = label, total, 0
        self.enabled = enabled and sys.stderr is not None and (total is None or total > 0)
        self.interval = interval
        self._start = time.monotonic()
        self._last = -float("inf")
        self._open = False

    def advance(self, count: int) -> None:
        """Count ``count`` more items done; shows ``done/total (rate/s)`` and ends the line at the total."""
        self.done += count
        elapsed = max(time.monotonic() - self._start, 1e-9)
        finished = self.total is not None and self.done >= self.total
        fraction = None if not self.total else self.done / self.total
        total = "" if self.total is None else f"/{self.total}"
        self.show(f"{self.done}{total} ({self.done / elapsed:.0f}/s)", fraction, force=finished)
        if finished:
            self.close()

    def show(self, text: str, fraction: float | None = None, *, force: bool = False) -> None:
        """Redraw the line with ``text`` (and a bar when ``fraction`` in [0, 1] is known)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        bar = ""
        if fraction is not None:
            f = min(max(fraction, 0.0), 1.0)
            filled = int(20 * f)
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {100 * f:3.0f}% "
        sys.stderr.write(f"\r{self.label}: {bar}{text} ")
        sys.stderr.flush()
        self._open = True

    def close(self) -> None:
        """End the line (the next output starts on a fresh one)."""
        if self.enabled and self._open:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self._open = False
