"""One progress bar per long scoring or answering loop (base, each student, the teacher)."""
from __future__ import annotations

import sys
import time


class progress:
    """One progress bar per scored model (base, each student, teacher), on stderr so stdout keeps
    only the results table. Scoring is most of an eval's 2-4 minutes, and a silent eval looks hung:
    in a terminal this is a live rich bar (rows done, elapsed, time left); in a log (`make demo |
    tee`, CI, a subprocess) rich would draw nothing, so it prints a line at every ~10 % instead.
    `advance(n)` is called per batch (local models) or per request (teacher), under the caller's lock."""

    def __init__(self, desc: str, total: int):
        from rich.console import Console

        self.desc, self.total, self.done, self.t0 = desc, total, 0, time.time()
        self.console = Console(stderr=True)
        self.step, self.shown, self.bar = max(1, total // 10), -1, None

    def __enter__(self) -> "progress":
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self.bar.start()
            self.task = self.bar.add_task(self.desc, total=self.total)
        else:
            self._line()
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.advance(self.task, n)
        elif self.done // self.step > self.shown or self.done >= self.total:
            self._line()

    def _line(self) -> None:
        self.shown = self.done // self.step
        el = time.time() - self.t0
        left = f", ~{el / self.done * (self.total - self.done):.0f} s left" if 0 < self.done < self.total else ""
        pct = 100 * self.done // self.total if self.total else 100
        print(f"{self.desc}: {self.done}/{self.total} rows ({pct}%), {el:.0f} s{left}", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
