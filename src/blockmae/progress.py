"""Progress of long loops over images (features, diagnostics, distortions): a tqdm bar on a terminal; where
stderr is a file (SLURM's .out, nohup, CI) a plain line every interval instead, so a long evaluation is never
silent for minutes. Short loops (under one interval) print nothing there."""

from __future__ import annotations

import datetime as _dt
import sys
import time
from types import TracebackType
from typing import Callable, TextIO

from tqdm.auto import tqdm

PLAIN_INTERVAL_S = 30.0


class ImageProgress:
    """`with ImageProgress(total, desc) as progress: ... progress.update(batch_size)`; `enabled=False`: silent
    (e.g. where another bar runs, as the online monitor inside pretraining)."""

    def __init__(self, total: int, desc: str, interval_s: float = PLAIN_INTERVAL_S, stream: TextIO | None = None,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 enabled: bool = True) -> None:
        self.total, self.desc, self.interval_s, self.enabled = total, desc, interval_s, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False, file=self.stream,
                        disable=not (enabled and self.terminal))
        self.done = 0
        self.clock = clock
        self.start = self.last_line = clock()
        self.lines = 0

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = self.clock()
        if self.enabled and not self.terminal and now - self.last_line >= self.interval_s:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = _dt.timedelta(seconds=round((self.total - self.done) / rate)) if rate > 0 else "?"
        print(f"{self.desc}: {self.done}/{self.total} img  {rate:.1f} img/s  ETA {eta}", file=self.stream,
              flush=True)
        self.last_line, self.lines = now, self.lines + 1

    def __enter__(self) -> ImageProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.bar.close()
        if kind is None and self.lines and self.done > 0:  # the closing line of a loop that was reported
            self._line(self.clock())
