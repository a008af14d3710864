"""What `main.py` can run: the registry of modes, each a config check and a runner.

A mode's check runs before any work, so a bad config fails in seconds with a message that says
what to change. The checks and runners live beside this file:

  checks      the config checks the modes' checks are made of (ConfigError)
  training    init, cotrain, schedule (every stage, exports, the evaluation table), export
  evaluation  retrieval, linear_probe, finetune; the schedule's evaluation table
  demo        generated data, then the schedule
  import_weights  CoCLR's and torchvision's S3D checkpoints as an export directory and a stage
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from cvtcl_jax.eval.run import PROTOCOLS
from cvtcl_jax.modes import demo, evaluation, import_weights, training
from cvtcl_jax.modes.checks import ConfigError


@dataclasses.dataclass(frozen=True)
class Mode:
    check: Callable  # (config) -> None; raises ConfigError
    run: Callable  # (config, workdir) -> dict summary


MODES: dict[str, Mode] = {
    "init": Mode(training.check_init, training.run_init),
    "cotrain": Mode(training.check_cotrain, training.run_cotrain),
    "schedule": Mode(training.check_schedule, training.run_schedule),
    "export": Mode(training.check_export, training.run_export),
    "import_weights": Mode(import_weights.check_import, import_weights.run_import),
    "demo": Mode(demo.check_demo, demo.run_demo),
    **{
        protocol: Mode(evaluation.protocol_check(protocol), evaluation.protocol_runner(protocol))
        for protocol in PROTOCOLS
    },
}


def run(config, workdir: str | Path) -> dict:
    """Checks the config for its mode, then runs it in `workdir`."""
    if config.get("mode") not in MODES:
        raise ConfigError(
            f"unknown mode {config.get('mode')!r}; the modes are {sorted(MODES)} "
            "(set by the config file, e.g. --config=configs/init_rgb.py)"
        )
    mode = MODES[config.mode]
    mode.check(config)
    return mode.run(config, workdir)


def main_error(e: Exception) -> None:
    """Prints a config error the way users should see it (no traceback) and exits with 2."""
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
