"""One run per workdir: a lock file naming its holder, taken before any work and released at the
end, so a second launch on a workdir in use (a double-submitted or re-queued job) stops instead
of writing over the first run's checkpoints.

WORKDIR/run.lock holds {host, pid, process start, started, command}; the holder touches it every
HEARTBEAT_S seconds. A lock is held while its holder lives: on this host, while its pid runs the
same process (the start time tells a reused pid apart); on another host, while its heartbeat is
younger than STALE_S. A dead holder's lock is taken over, saying so. A multi-host run takes the
lock once, on process 0, and every process stops if it is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from cvtcl_jax import console

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 180.0


class WorkdirBusy(RuntimeError):
    """Another live run holds the workdir; the message names it."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process `pid` (Linux; None elsewhere or if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _me() -> dict:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "process_start": _process_start(pid),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def _alive(holder: dict, age_s: float) -> bool:
    """Whether the run that wrote `holder` (its lock last touched `age_s` ago) still runs."""
    if holder.get("host") != socket.gethostname():
        return age_s < STALE_S
    pid = holder.get("pid")
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # another user's live process
        return True
    start = _process_start(int(pid))
    return holder.get("process_start") is None or start is None or start == holder["process_start"]


def _describe(holder: dict) -> str:
    return (
        f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')} "
        f"({holder.get('command', '')})"
    )


def _read(path: Path) -> tuple[dict, float] | None:
    try:
        holder = json.loads(path.read_text() or "{}")
        return holder, time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None


def acquire(workdir: str | Path) -> dict:
    """Takes WORKDIR's lock for this process. Returns what it wrote; raises WorkdirBusy naming the
    live holder. A dead holder's lock is taken over with a message on stderr."""
    path = Path(workdir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _me()
    for _ in range(3):  # a lost race for a stale lock is tried again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = _read(path)
            if seen is None:
                time.sleep(0.1)  # being written: look again
                continue
            holder, age = seen
            if _alive(holder, age):
                raise WorkdirBusy(
                    f"{workdir} is in use by another run: {_describe(holder)}. Wait for it to finish, "
                    f"stop it, or choose another --workdir (a lock left by a dead process is taken over "
                    f"by itself; {path} names the holder)"
                ) from None
            console.warn(f"taking over the lock of {workdir} from a run that is gone: {_describe(holder)}")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return me
    raise WorkdirBusy(f"could not take the lock {path}: other launches keep taking it")


def release(workdir: str | Path, me: dict) -> None:
    """Removes WORKDIR's lock if this process still holds it."""
    path = Path(workdir) / LOCK_FILE
    seen = _read(path)
    if seen is not None and seen[0].get("pid") == me["pid"] and seen[0].get("host") == me["host"]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def holding(workdir: str | Path, take: bool = True):
    """The lock held for the duration of the block, its heartbeat refreshed in the background.

    take: False for the processes of a multi-host run other than process 0 (which holds it for
    all): nothing is taken. The processes learn from process 0 whether it got the lock, and all
    raise WorkdirBusy if it did not.
    """
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    me, refused = None, None
    if take:
        try:
            me = acquire(workdir)
        except WorkdirBusy as e:
            refused = e
    if jax.process_count() > 1:
        got = int(multihost_utils.broadcast_one_to_all(np.int32(refused is None)))
        if not got and refused is None:
            refused = WorkdirBusy(f"process 0 could not take the lock of {workdir}; its log names the holder")
    if refused is not None:
        raise refused
    if me is None:
        yield None
        return
    path = Path(workdir) / LOCK_FILE
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=beat, name="workdir-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield me
    finally:
        stop.set()
        release(workdir, me)
