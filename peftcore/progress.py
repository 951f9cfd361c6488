"""The Trainer's progress display: one self-overwriting line on a terminal, a line every tenth of the run
elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """One self-overwriting line: step, loss, throughput, ETA (tqdm or rich are not needed); ``note`` writes a line
    that stays (an evaluation) above it. Where the stream is not a terminal, a line every tenth of the run.

    ``total`` is the step at which the run ends, ``first`` the step this run starts from (a resumed run's throughput
    and ETA count only its own steps); the line goes to ``stream`` (standard error by default).
    """

    def __init__(self, total: int, stream: TextIO | None = None, first: int = 0) -> None:
        self.total, self.first, self.start = total, first, time.perf_counter()
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.line = ""  # the progress line on screen (interactive only)

    def update(self, step: int, loss: float, examples: int) -> None:
        """Show ``step`` (of ``total``) with its ``loss``; ``examples`` is how many this run has trained on."""
        elapsed = time.perf_counter() - self.start
        done = step - self.first
        eta = elapsed / done * (self.total - step) if done else 0.0
        line = (f"step {step}/{self.total}  loss {loss:.4f}  {examples / max(elapsed, 1e-9):.0f} examples/s  "
                f"eta {eta:.0f}s")
        if self.interactive:
            self.line = line.ljust(78)
            self.stream.write("\r" + self.line)
        elif step == self.total or step % max(1, self.total // 10) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """Write ``text`` as a line that stays above the progress line (which a terminal shows again below it)."""
        self.stream.write(("\r" + text.ljust(78) + "\n" + self.line) if self.interactive else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a terminal's progress line, so that what is written next starts on a line of its own."""
        if self.interactive and self.line:
            self.stream.write("\n")
            self.stream.flush()
