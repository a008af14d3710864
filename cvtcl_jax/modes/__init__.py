"""What `main.py` can run: the registry of modes, each a config check and a runner.

A mode's check runs before any work, so a bad config fails in seconds with a message that says
what to change. The checks and runners live beside this file:

  checks      the config checks the modes' checks are made of (ConfigError)
  training    init, cotrain, schedule (every stage, exports, the evaluation table), export
  evaluation  retrieval, linear_probe, finetune; the schedule's evaluation table
  demo        generated data, then the schedule
  import_weights  CoCLR's and torchvision's S3D checkpoints as an export directory and a stage
  workdir_lock    one run per workdir
  run_record      WORKDIR/run.json: each launch's command, config, versions, machine, times
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from cvtcl_jax import console, report
from cvtcl_jax.eval.protocols import PROTOCOLS
from cvtcl_jax.modes import demo, evaluation, import_weights, run_record, training, workdir_lock
from cvtcl_jax.modes.checks import ConfigError
from cvtcl_jax.training.resume import ResumeError


@dataclasses.dataclass(frozen=True)
class Mode:
    check: Callable  # (config) -> None; raises ConfigError
    work: Callable  # (config, workdir) -> dict summary: what the mode does
    reported: bool = True  # the run ends by writing WORKDIR/report.html (config.report)


MODES: dict[str, Mode] = {
    "init": Mode(training.check_init, training.run_init),
    "cotrain": Mode(training.check_cotrain, training.run_cotrain),
    "schedule": Mode(training.check_schedule, training.run_schedule),
    "export": Mode(training.check_export, training.run_export, reported=False),
    "import_weights": Mode(import_weights.check_import, import_weights.run_import, reported=False),
    "demo": Mode(demo.check_demo, demo.run_demo),
    **{
        protocol: Mode(evaluation.protocol_check(protocol), evaluation.protocol_runner(protocol))
        for protocol in PROTOCOLS
    },
}


def run(config, workdir: str | Path) -> dict:
    """Checks the config for its mode, then runs it in `workdir`, holding the workdir's lock
    (one run per workdir; process 0 takes it for a multi-host run)."""
    if config.get("mode") not in MODES:
        raise ConfigError(
            f"unknown mode {config.get('mode')!r}; the modes are {sorted(MODES)} "
            "(set by the config file, e.g. --config=configs/init_rgb.py)"
        )
    mode = MODES[config.mode]
    mode.check(config)
    import jax

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(workdir_lock.holding(workdir, take=jax.process_index() == 0))
        except workdir_lock.WorkdirBusy as e:
            raise ConfigError(str(e)) from None
        record = run_record.start(config, workdir) if jax.process_index() == 0 else None
        try:
            result = mode.work(config, workdir)
        except ResumeError as e:  # found before the stage does any work
            raise ConfigError(str(e)) from None
        finally:
            if record is not None:
                run_record.finish(workdir, record, sys.exc_info()[1])
        if mode.reported and config.get("report", True):
            write_report(workdir)
        return result


def write_report(workdir: str | Path) -> None:
    """WORKDIR/report.html, by process 0 (it says so on the console)."""
    import jax

    if jax.process_index() == 0:
        console.say(f"report: {report.make_report(workdir)}")


def main_error(e: Exception) -> None:
    """Prints a config error the way users should see it (no traceback) and exits with 2."""
    console.error(str(e))
    sys.exit(2)
