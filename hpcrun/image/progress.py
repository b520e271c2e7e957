"""Pull/push progress on stderr, in Docker's words.

On a terminal: one line per layer, redrawn in place (status and a byte bar). In a
batch log (not a terminal): one line per status change and no byte counts, e.g.::

    a3ed95caeb02: Pulling fs layer
    a3ed95caeb02: Already exists
    a3ed95caeb02: Download complete
    Digest: sha256:...

quiet=True prints nothing. Thread-safe (layers download in parallel).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Optional


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n:.1f}GB"


class Progress:
    def __init__(self, quiet: bool = False, stream=None, tty: Optional[bool] = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        if tty is None:
            try:
                tty = self.stream.isatty() and os.environ.get("TERM", "") != "dumb"
            except (AttributeError, ValueError):
                tty = False
        self.tty = tty
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._text: dict[str, str] = {}
        self._bytes: dict[str, tuple[int, Optional[int]]] = {}
        self._last_draw = 0.0

    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def line(self, text: str) -> None:
        """A line of its own (below the layer lines on a terminal)."""
        if self.quiet:
            return
        with self._lock:
            self._write(text + "\n")
            if self.tty:
                # Lines printed now are below the table; start a new table after them.
                self._order.clear()

    def status(self, key: str, text: str) -> None:
        """Set a layer's status ("Downloading", "Already exists", ...)."""
        if self.quiet:
            return
        with self._lock:
            if self._text.get(key) == text and (not self.tty or key in self._order):
                return
            self._text[key] = text
            if text not in ("Downloading", "Pushing"):
                self._bytes.pop(key, None)
            if not self.tty:
                self._write(f"{short(key)}: {text}\n")
                return
            self._draw(key)

    def advance(self, key: str, n: int, total: Optional[int] = None) -> None:
        """Count n more bytes for a layer (drawn on a terminal only)."""
        if self.quiet or not self.tty:
            return
        with self._lock:
            done, tot = self._bytes.get(key, (0, total))
            self._bytes[key] = (done + n, total if total is not None else tot)
            now = time.monotonic()
            if now - self._last_draw < 0.1:
                return
            self._last_draw = now
            self._draw(key)

    def _render(self, key: str) -> str:
        text = self._text.get(key, "")
        if key in self._bytes:
            done, tot = self._bytes[key]
            if tot:
                width = 40
                fill = min(width, int(width * done / tot))
                bar = "=" * max(fill - 1, 0) + (">" if fill else "") + " " * (width - fill)
                text += f" [{bar}] {_human(done)}/{_human(tot)}"
            else:
                text += f" {_human(done)}"
        return f"{short(key)}: {text}"

    def _draw(self, key: str) -> None:
        if key not in self._order:
            self._order.append(key)
            self._write(self._render(key) + "\n")
            return
        up = len(self._order) - self._order.index(key)
        # cursor up N lines, clear the line, write, then back down.
        self._write(f"\x1b[{up}A\r\x1b[2K{self._render(key)}\r\x1b[{up}B")
