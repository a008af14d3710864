"""What `main.py` can run: a small registry of modes, each a config check and a runner.

A mode's check runs before any work, so a bad config fails in seconds with a message that says
what to change. Evaluation modes register here the same way.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import jax
from absl import logging

from cvtcl_jax import checkpoints
from cvtcl_jax import config_checks as checks
from cvtcl_jax.config_checks import ConfigError
from cvtcl_jax.train import Stage, other_view, stage_done, train_stage


@dataclasses.dataclass(frozen=True)
class Mode:
    check: Callable  # (config, workdir) -> None; raises ConfigError
    run: Callable  # (config, workdir) -> dict summary


MODES: dict[str, Mode] = {}


def register(name: str, check: Callable):
    """Decorator: registers `run` as mode `name` with its config check."""

    def wrap(run):
        MODES[name] = Mode(check, run)
        return run

    return wrap


def run(config, workdir: str | Path) -> dict:
    """Checks the config for its mode, then runs it in `workdir`."""
    if config.get("mode") not in MODES:
        raise ConfigError(
            f"unknown mode {config.get('mode')!r}; the modes are {sorted(MODES)} "
            "(set by the config file, e.g. --config=configs/init_rgb.py)"
        )
    mode = MODES[config.mode]
    mode.check(config, workdir)
    return mode.run(config, workdir)


# ---------------------------------------------------------------------- training of one stage


def _check_pretrain(config, workdir) -> None:
    checks.check_view(config.train.view)
    checks.check_training(config)
    checks.check_data(config, (config.train.view,))


@register("pretrain", _check_pretrain)
def run_pretrain(config, workdir) -> dict:
    """Initialization of one view: alpha * InfoNCE + beta * LTCL (SPEC 3)."""
    view = config.train.view
    stage = Stage(f"init_{view}", view, config.schedule.init_epochs, tuple(config.optim.decay_epochs))
    return train_stage(config, workdir, stage)


def _check_cotrain(config, workdir) -> None:
    view = config.train.view
    checks.check_view(view)
    checks.check_training(config)
    checks.check_data(config, (view, other_view(view)))
    checks.check_stage_source(config.train.init_from, "train.init_from", view, config.model)
    checks.check_stage_source(config.train.other_from, "train.other_from", other_view(view), config.model)


@register("cotrain", _check_cotrain)
def run_cotrain(config, workdir) -> dict:
    """Co-training of one view with the other view frozen: alpha * L_RF + beta * LTCL (SPEC 3)."""
    view = config.train.view
    stage = Stage(
        f"cotrain_{view}",
        view,
        config.schedule.cotrain_epochs,
        tuple(config.schedule.cotrain_decay_epochs),
        other_view=other_view(view),
        init_from=config.train.init_from,
        other_from=config.train.other_from,
    )
    return train_stage(config, workdir, stage)


# ---------------------------------------------------------------------- export


def export_stage(source: str | Path, out_dir: str | Path, encoder: str = "encoder") -> dict:
    """Exports the backbone of a stage's latest checkpoint (see cvtcl_jax/export.py)."""
    from cvtcl_jax.export import export_backbone
    from cvtcl_jax.features import backbone_variables
    from cvtcl_jax.models import ContrastiveEncoder

    info = checkpoints.stage_info(source)
    cfg = info["config"]
    model = ContrastiveEncoder.from_config(cfg["model"])
    d = cfg["data"]
    clip = (d["num_frames"], d["crop_size"], d["crop_size"])
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, *clip, 3)), train=False)
    )
    variables = checkpoints.restore_encoder(source, dict(shapes), encoder)
    where = {
        "workdir": str(Path(source).absolute()),
        "stage": info["progress"].get("stage"),
        "batch": info["step"],
        "epoch": info["progress"].get("epoch"),
        "encoder": encoder,
    }
    manifest = export_backbone(
        backbone_variables(variables), cfg["model"], clip, info["progress"]["view"], out_dir, where
    )
    logging.info("exported the %s encoder of %s to %s", encoder, source, out_dir)
    return manifest


def _check_export(config, workdir) -> None:
    if config.export.encoder not in ("encoder", "ema_encoder"):
        raise ConfigError(
            f"export.encoder={config.export.encoder!r}; use 'encoder' (query) or 'ema_encoder' (key)"
        )
    checks.check_stage_source(config.export.source, "export.source", None)


@register("export", _check_export)
def run_export(config, workdir) -> dict:
    return export_stage(config.export.source, workdir, config.export.encoder)


# ---------------------------------------------------------------------- the paper's whole schedule


def schedule_stages(config, workdir: str | Path) -> list[Stage]:
    """init RGB, init flow, then per cycle co-training of RGB (flow frozen) and of flow (RGB frozen)."""
    wd = Path(workdir)
    s = config.schedule
    stages = [Stage(f"init_{v}", v, s.init_epochs, tuple(config.optim.decay_epochs)) for v in ("rgb", "flow")]
    last = {"rgb": str(wd / "init_rgb"), "flow": str(wd / "init_flow")}
    for cycle in range(1, s.cotrain_cycles + 1):
        for view in ("rgb", "flow"):
            name = f"cotrain{cycle}_{view}"
            stages.append(
                Stage(
                    name,
                    view,
                    s.cotrain_epochs,
                    tuple(s.cotrain_decay_epochs),
                    other_view=other_view(view),
                    init_from=last[view],
                    other_from=last[other_view(view)],
                    beta=None if view == "rgb" else s.cotrain_flow_beta,
                )
            )
            last[view] = str(wd / name)
    return stages


def _export_once(source: Path, out_dir: Path, encoder: str) -> dict:
    """Exports unless out_dir already holds this very checkpoint's export (a re-run)."""
    manifest = out_dir / "manifest.json"
    if manifest.is_file():
        done = json.loads(manifest.read_text())
        step = checkpoints.stage_info(source)["step"]
        src = done["source"]
        if (src["workdir"], src["batch"], src["encoder"]) == (str(Path(source).absolute()), step, encoder):
            return done
    return export_stage(source, out_dir, encoder)


def _check_schedule(config, workdir) -> None:
    checks.check_training(config)
    checks.check_data(config, ("rgb", "flow"))
    if config.schedule.cotrain_cycles < 0 or config.schedule.init_epochs < 1:
        raise ConfigError("schedule.init_epochs must be >= 1 and schedule.cotrain_cycles >= 0")


@register("schedule", _check_schedule)
def run_schedule(config, workdir) -> dict:
    """Every stage in its own sub-workdir (finished ones are skipped), then both views exported."""
    wd = Path(workdir)
    results = {}
    stages = schedule_stages(config, wd)
    for stage in stages:
        if stage_done(wd / stage.name):
            logging.info("stage %s is finished; skipping it", stage.name)
        results[stage.name] = train_stage(config, wd / stage.name, stage)
    last = {stage.view: wd / stage.name for stage in stages}  # each view's latest stage
    exports = {
        view: _export_once(path, wd / "export" / view, config.export.encoder) for view, path in last.items()
    }
    summary = {"stages": results, "exports": {v: str(wd / "export" / v) for v in exports}}
    if jax.process_index() == 0:
        (wd / "schedule.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------------- the demo


def _check_demo(config, workdir) -> None:
    checks.check_training(config)


@register("demo", _check_demo)
def run_demo(config, workdir) -> dict:
    """The whole schedule on a generated motion-class video set (data_prep's generator and command)."""
    from data_prep import build, synthetic

    wd = Path(workdir)
    raw, prepared = wd / "raw", wd / "data"
    demo = config.demo
    if not (prepared / "metadata.json").is_file():
        if not (raw / "ucfTrainTestlist").is_dir():
            synthetic.generate(
                raw,
                num_classes=demo.num_classes,
                groups=demo.groups,
                clips_per_group=demo.clips_per_group,
                num_frames=demo.num_frames,
                height=demo.height,
                width=demo.width,
                seed=config.seed,
            )
        argv = ["--dataset=ucf101", f"--raw_dir={raw}", f"--out_dir={prepared}", "--splits=1", "--quiet"]
        argv += [f"--short_side={demo.short_side}", f"--workers={demo.prep_workers}"]
        if build.main(argv) != 0:
            raise RuntimeError(f"data preparation of the demo set failed; see {prepared / 'metadata.json'}")
    with config.unlocked():
        config.data.dir = str(prepared)
    checks.check_data(config, ("rgb", "flow"))
    return run_schedule(config, wd)


def main_error(e: Exception) -> None:
    """Prints a config error the way users should see it (no traceback) and exits with 2."""
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
