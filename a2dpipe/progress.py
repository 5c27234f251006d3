"""Progress bars of the per-frame commands and the trainers: tqdm on stderr, with rate and time left.

On a terminal the bar redraws in place every :data:`TERMINAL_INTERVAL` seconds. Anywhere else (a job's output
captured by Snakemake, a SLURM log file) tqdm would join its redraws with carriage returns into one ever-growing
line; there each update is a plain line of its own, at most every :data:`LOG_INTERVAL` seconds, so a log reads
top to bottom::

    predict ours-rgbflow-dataset-dataset:  40%|####      | 512/1280 [01:02<01:33, 8.2frame/s]

A job shorter than the interval writes two lines: the start and the end.
"""

from __future__ import annotations

import sys

__all__ = ["progress", "TERMINAL_INTERVAL", "LOG_INTERVAL"]

TERMINAL_INTERVAL = 2.0  # seconds between redraws on a terminal
LOG_INTERVAL = 30.0  # seconds between lines in a log: a 10-minute job writes ~20


class _Lines:
    """A stream for tqdm that writes each redraw (``\\r`` + bar + padding) as a line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress(iterable=None, *, total: int | None = None, desc: str, unit: str = "frame", file=None, **kwargs):
    """A ``tqdm`` bar over ``iterable`` (or ``total`` items, advanced with ``.update(n)``) on ``file`` (stderr).

    Extra keyword arguments go to tqdm (``initial``, ``postfix``, ...). Off a terminal: one plain ASCII line per
    update (module docstring).
    """
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    terminal = _is_terminal(stream)
    options = {"mininterval": TERMINAL_INTERVAL if terminal else LOG_INTERVAL, "ascii": not terminal,
               "dynamic_ncols": terminal, **kwargs}
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream if terminal else _Lines(stream), **options)
