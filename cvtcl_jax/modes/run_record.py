"""WORKDIR/run.json: what each launch on a workdir was (command, config, versions, machine,
devices) and when it started and ended, for the run's report (cvtcl_jax/report.py)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import sys
from pathlib import Path

from cvtcl_jax import checkpoints
from cvtcl_jax.report import RUN_RECORD


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def start(config, workdir: str | Path) -> dict:
    """Writes this launch's record (the previous launches' stay in its 'earlier' list)."""
    import flax
    import jax

    path = Path(workdir) / RUN_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = []
    if path.is_file():
        with_previous = json.loads(path.read_text())
        earlier = with_previous.pop("earlier", []) + [
            {k: with_previous.get(k) for k in ("command", "started", "ended", "outcome")}
        ]
    record = {
        "mode": config.get("mode"),
        "command": " ".join(sys.argv),
        "started": _now(),
        "ended": None,
        "outcome": "running",
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__},
        "machine": {"host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "devices": {
            "count": jax.device_count(),
            "kind": jax.devices()[0].device_kind,
            "platform": jax.default_backend(),
            "processes": jax.process_count(),
        },
        "earlier": earlier,
        "config": checkpoints.config_json(config),
    }
    path.write_text(json.dumps(record, indent=1, default=str))
    return record


def finish(workdir: str | Path, record: dict, error: BaseException | None) -> None:
    """Records the launch's end and outcome ('done', or the error's type)."""
    record.update(ended=_now(), outcome="done" if error is None else type(error).__name__)
    (Path(workdir) / RUN_RECORD).write_text(json.dumps(record, indent=1, default=str))
