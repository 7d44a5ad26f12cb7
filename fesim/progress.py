"""Progress display with ETA for long jobs, on stderr and only when stderr is a terminal.

Two displays, both silent when their stream is not a TTY (a pipe, a file, a CI log) so that
logs and captured output stay clean:

* :class:`Progress` counts finished items of a known total (scans of a study) and estimates the
  time left from the mean time per item so far.
* :class:`RunProgress` follows one scan through the stages of :func:`fesim.pipeline.run_scan`
  and the load steps of each strength analysis; the ETA of a load case is estimated from the
  expected number of steps (the peak lies near ``1 / step_fraction`` steps).

Both are plain callables/objects: library code only calls them when given one.
"""

from __future__ import annotations

import math
import sys
import time


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def is_tty(stream) -> bool:
    """True when ``stream`` is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Line:
    """One status line rewritten in place (``\\r``), finished with a newline on close."""

    def __init__(self, stream=None, enabled: bool | None = None, min_interval_s: float = 0.2):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = is_tty(self.stream) if enabled is None else bool(enabled)
        self.min_interval_s = min_interval_s
        self._last = -math.inf
        self._width = 0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class Progress:
    """``done/total`` items with elapsed time and ETA (mean time per item so far).

    Parameters
    ----------
    total : int
        Number of items.
    label : str
        Shown at the start of the line, e.g. ``"study"``.
    unit : str
        Name of the items, e.g. ``"scans"``.
    stream : file, optional
        Default ``sys.stderr``.
    enabled : bool, optional
        Default: only when ``stream`` is a terminal.
    """

    def __init__(self, total: int, label: str = "", unit: str = "items", stream=None,
                 enabled: bool | None = None):
        self.total = int(total)
        self.label, self.unit = label, unit
        self.done = 0
        self.failed = 0
        self.t0 = time.monotonic()
        self.line = _Line(stream, enabled)
        self.show(force=True)

    def eta_s(self) -> float:
        """Seconds left, from the mean time per finished item (NaN before the first)."""
        if self.done == 0:
            return math.nan
        return (time.monotonic() - self.t0) / self.done * (self.total - self.done)

    def text(self, note: str = "") -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        fail = f", {self.failed} failed" if self.failed else ""
        return (f"[{self.label}] {self.done}/{self.total} {self.unit} ({pct:.0f} %{fail})  "
                f"elapsed {_hms(time.monotonic() - self.t0)}  ETA {_hms(self.eta_s())}"
                + (f"  {note}" if note else ""))

    def show(self, note: str = "", force: bool = False) -> None:
        self.line.show(self.text(note), force=force)

    def update(self, n: int = 1, failed: bool = False, note: str = "") -> None:
        """Count ``n`` more items as finished (``failed`` ones too) and redraw."""
        self.done += n
        self.failed += n if failed else 0
        self.show(note, force=True)

    def close(self) -> None:
        self.show(force=True)
        self.line.close()


class RunProgress:
    """Stages and load steps of one scan's analysis (see :func:`fesim.pipeline.run_scan`).

    ``stage(name)`` is called when a stage starts; ``step_callback(case, expected)`` returns the
    ``progress(step, max_steps, force_N)`` callable given to
    :func:`fesim.analysis.strength.run_strength`. ``cases(names)`` announces the load cases so
    that the ETA covers all of them.
    """

    def __init__(self, label: str = "run", stream=None, enabled: bool | None = None):
        self.label = label
        self.line = _Line(stream, enabled)
        self.t0 = time.monotonic()
        self.case_names: list[str] = []
        self.cases_done = 0
        self.t_cases = None
        self.current = ""
        self._started: list[str] = []

    def cases(self, names) -> None:
        self.case_names = list(names)

    def stage(self, name: str) -> None:
        if name in self.case_names and name not in self._started:
            self._started.append(name)
            self.cases_done = len(self._started) - 1
            if self.t_cases is None:
                self.t_cases = time.monotonic()
        self.current = name
        self.line.show(f"[{self.label}] {name}  elapsed {_hms(time.monotonic() - self.t0)}", force=True)

    def eta_s(self, fraction_of_case: float) -> float:
        """Seconds left over all load cases, given the fraction done of the current one."""
        n = len(self.case_names)
        if not n or self.t_cases is None:
            return math.nan
        done = self.cases_done + min(max(fraction_of_case, 0.0), 1.0)
        if done <= 0:
            return math.nan
        return (time.monotonic() - self.t_cases) / done * (n - done)

    def step_callback(self, case: str, expected_steps: int):
        """``progress(step, max_steps, force_N)`` for :func:`run_strength` on load case ``case``."""
        peak = [0.0]

        def progress(step: int, max_steps: int, force_N: float) -> None:
            peak[0] = max(peak[0], force_N)
            # past the peak the curve stops within a few steps (stop_drop)
            expected = min(max_steps, max(expected_steps, step + 1 if force_N >= peak[0] else step + 2))
            k = (f" (case {self.case_names.index(case) + 1}/{len(self.case_names)})"
                 if case in self.case_names else "")
            self.line.show(f"[{self.label}] {case}{k} step {step}/~{expected}  F = {force_N:.0f} N  "
                           f"elapsed {_hms(time.monotonic() - self.t0)}  "
                           f"ETA ~{_hms(self.eta_s(step / expected))}")

        return progress

    def close(self) -> None:
        self.line.close()
