"""Progress bars: rate and time left, redrawn in place on a terminal, one plain line per update elsewhere."""

from __future__ import annotations

import io
import re

from a2dpipe.progress import LOG_INTERVAL, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream, steps: int = 5) -> str:
    with progress(total=steps, desc="predict x", file=stream, mininterval=0) as bar:
        for _ in range(steps):
            bar.update(1)
    return stream.getvalue()


def test_off_a_terminal_each_update_is_a_line_with_rate_and_time_left():
    text = _run(io.StringIO())
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 6 and lines[0].startswith("predict x:   0%") and "0/5" in lines[0]
    # [elapsed<left, rate] on every line once a rate is known; plain ASCII bars
    for line in lines[1:]:
        assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+frame/s\]$", line), line
        assert line.isascii()
    assert "5/5" in lines[-1]


def test_on_a_terminal_the_bar_redraws_in_place():
    text = _run(Terminal())
    assert text.count("\r") >= 5 and text.count("\n") <= 1


def test_off_a_terminal_updates_are_spaced_for_log_files():
    bar = progress(total=3, desc="x", file=io.StringIO())
    assert bar.mininterval == LOG_INTERVAL >= 10
    bar.close()
