"""Training progress for a person: a live bar on a terminal, a line every tenth of the run anywhere else.

A bar redraws itself at every step; written to a file, a pipe or a CI log, each redraw is kept, so a long
training would leave thousands of bars. When the stream is not a terminal, :class:`ProgressLines` writes one
plain line every ``total // lines`` steps (and at the last step) instead.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


class ProgressLines:
    """``update``/``set_postfix``/``close`` as tqdm's, writing a line at every ``total // lines`` steps."""

    def __init__(self, *, total: int, initial: int, desc: str, stream: IO[str], lines: int = 10) -> None:
        self.total, self.done, self.desc, self.stream = total, initial, desc, stream
        self.every = max(1, total // lines)
        self.started, self.first = time.perf_counter(), initial
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.done % self.every == 0 or self.done == self.total:
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        values = "".join(f" {k} {v}" for k, v in self.postfix.items())
        share = 100 * self.done // max(1, self.total)
        return f"{self.desc} {self.done}/{self.total} ({share}%){values} elapsed {_clock(elapsed)} eta {_clock(eta)}"

    def close(self) -> None:
        """Nothing to clear: every line written is final."""

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(ProgressLines):
    def update(self, n: int = 1) -> None:
        self.done += n


def progress(total: int, *, initial: int = 0, desc: str, enabled: bool = True, stream: IO[str] | None = None):
    """A tqdm bar when ``stream`` (default stderr) is a terminal, :class:`ProgressLines` when it is not, and
    nothing when not ``enabled``."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return _Silent(total=total, initial=initial, desc=desc, stream=stream)
    if stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True, file=stream)
    return ProgressLines(total=total, initial=initial, desc=desc, stream=stream)
