"""What a researcher sees: a quiet console (a line when a phase starts and ends, one live progress
bar, the warnings that matter) while everything else goes to a log file.

An entry point (`main.py`, `python -m data_prep.build`, `bench/fidelity.py`, `bench/ablations.py`)
calls `start(log_dir, name)` once: from then on the process's standard output and error - absl
and Python logging, TensorFlow's and XLA's C++ messages, Beam, TFDS, Orbax, the per-step metrics,
worker processes - go to `log_dir/<name>-<time>.log`, and `say`, `warn` and `progress` write to
the terminal. With `verbose` nothing is redirected (the full stream, as before). Code that imports
cvtcl_jax as a library is untouched: nothing here runs on import, and before `start` (or without
it) `say` and `warn` print to the standard streams and bars draw on standard error.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

# The terminal's streams once `start` has moved the standard ones to the log (None: not moved).
_terminal: dict[str, TextIO] = {}
_log_path: Path | None = None
_quiet = False  # processes other than a multi-host run's first print nothing


def start(log_dir: str | Path, name: str, verbose: bool = False) -> Path | None:
    """Sends this process's standard output and error to a new log file in `log_dir` (unless
    `verbose`); returns its path."""
    global _log_path
    if verbose or _terminal:
        return _log_path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(log_dir) / f"{name}-{stamp}-{socket.gethostname()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for key, fd in (("out", 1), ("err", 2)):
        _terminal[key] = os.fdopen(os.dup(fd), "w", buffering=1)
        os.dup2(log, fd)
    os.close(log)
    _log_path = path
    say(f"log: {path}")
    return path


def set_process(index: int) -> None:
    """This process's index in a multi-host run, once known: the others print nothing but errors,
    and their log files are named by it."""
    global _quiet, _log_path
    if index == 0:
        return
    _quiet = True
    if _log_path is not None:
        renamed = _log_path.with_name(f"{_log_path.stem}-process{index}.log")
        _log_path.rename(renamed)
        _log_path = renamed


def log_path() -> Path | None:
    """The log file `start` opened (None: the standard streams were not moved)."""
    return _log_path


def stream(kind: str = "err") -> TextIO:
    """The terminal's standard output ('out') or error ('err')."""
    return _terminal.get(kind) or (sys.stdout if kind == "out" else sys.stderr)


def say(message: str) -> None:
    """A line for the user: a phase starting or ending, a result."""
    if not _quiet:
        print(message, file=stream("out"), flush=True)


def warn(message: str) -> None:
    """A warning that matters to the user: on the terminal and in the log."""
    if not _quiet:
        print(f"warning: {message}", file=stream("err"), flush=True)
    if _terminal:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """An error that ends the run: on the terminal (every process) and in the log."""
    print(f"error: {message}", file=stream("err"), flush=True)
    if _terminal:
        print(f"error: {message}", file=sys.stderr, flush=True)
        if _log_path is not None:
            print(f"(the log: {_log_path})", file=stream("err"), flush=True)


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def _terminal_size(out: TextIO) -> tuple[int, int]:
    try:
        return tuple(os.get_terminal_size(out.fileno()))
    except (OSError, ValueError):
        return 0, 0


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


class Progress:
    """One live progress bar: redrawn in place on a terminal (tqdm); when the output is a file or
    a pipe, a line every `every` of the way (the end is the caller's own line)."""

    def __init__(
        self,
        total: int,
        description: str,
        initial: int = 0,
        unit: str = "step",
        every: float = 0.25,
        enabled: bool = True,
    ):
        self.total, self.description, self.unit = total, description, unit
        self._enabled = enabled and not _quiet
        self.n, self._every, self._next = initial, max(1, int(total * every)), initial
        self._postfix: dict = {}
        self._start, self._start_n = time.perf_counter(), initial
        out = stream("err")
        self._bar = None
        if self._enabled and out.isatty():
            from tqdm import tqdm

            # A terminal that reports no size (a pty without a window) would hide the bar.
            columns, lines = _terminal_size(out)
            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=description,
                unit=unit,
                file=out,
                dynamic_ncols=columns > 0,
                ncols=None if columns > 0 else 100,
                nrows=None if lines > 0 else 24,
            )
        elif self._enabled:
            self._next = initial + self._every

    def update(self, n: int | None = None, **postfix) -> None:
        """Moves to step `n` (default: one more), showing `postfix` (e.g. loss=..)."""
        n = self.n + 1 if n is None else n
        if postfix:
            self._postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n - self.n)
            if postfix:
                self._bar.set_postfix(self._format(), refresh=False)
        elif self._enabled and self._next <= n < self.total:
            self._next = n + self._every
            print(self._line(n), file=stream("err"), flush=True)
        self.n = n

    def _format(self) -> dict:
        return {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in self._postfix.items()}

    def _line(self, n: int) -> str:
        elapsed = time.perf_counter() - self._start
        rate = (n - self._start_n) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - n) / rate if rate > 0 else float("nan")
        shown = ", ".join(f"{k} {v}" for k, v in self._format().items())
        return (
            f"{self.description}: {n}/{self.total} {_plural(self.unit)} ({100 * n / max(self.total, 1):.0f}%)"
            + (f", {shown}" if shown else "")
            + (f", ETA {duration(eta)}" if eta == eta and n < self.total else "")
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
