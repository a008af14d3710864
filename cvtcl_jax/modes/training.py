"""The training modes: one stage (init, cotrain), the paper's whole schedule, and export.

Stage names (`training.stage.stage_name`): `init_<view>` for initialization,
`cotrain<cycle>_<view>` for co-training (the cotrain mode's single run is `cotrain_<view>`); each
stage trains in WORKDIR/<stage name> under the schedule, in WORKDIR itself under the init and
cotrain modes.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from cvtcl_jax import checkpoints, console, report
from cvtcl_jax.eval.training_check import RetrievalCheck
from cvtcl_jax.export import export_stage
from cvtcl_jax.modes import checks, evaluation
from cvtcl_jax.modes.checks import ConfigError
from cvtcl_jax.training.stage import (
    Stage,
    finished_epochs,
    other_view,
    stage_config,
    stage_name,
    train_stage,
)


def run_stage(config, workdir, stage: Stage) -> dict:
    """Trains one stage in `workdir` with the config's in-training retrieval check (run with the
    weight settings of the weights the stage starts from)."""
    config = stage_config(config, stage)
    return train_stage(config, workdir, stage, evaluate=RetrievalCheck(config, stage.view))


def init_stage(config, view: str, init_from: str | None = None) -> Stage:
    """Initialization of `view`: alpha * InfoNCE + beta * LTCL (docs/method.md §3); from a fresh
    network, or continued from the encoders in init_from (a stage's or imported weights)."""
    return Stage(
        stage_name(view),
        view,
        config.schedule.init_epochs,
        tuple(config.optim.decay_epochs),
        init_from=init_from or None,
        key_from=config.train.key_from,
    )


def cotrain_stage(config, name: str, view: str, init_from: str, other_from: str) -> Stage:
    """A co-training run of `view` with the other view frozen: alpha * L_RF + beta * LTCL (the
    cotrain mode's, and each of the schedule's). Its LTCL weight is decided here, by the view
    trained: the RGB run keeps contrast.beta, the flow run takes schedule.cotrain_flow_beta
    (docs/method.md §3: LTCL on the RGB co-training run only)."""
    s = config.schedule
    return Stage(
        name,
        view,
        s.cotrain_epochs,
        tuple(s.cotrain_decay_epochs),
        other_view=other_view(view),
        init_from=init_from,
        other_from=other_from,
        key_from=config.train.key_from,
        other_encoder=config.train.other_encoder,
        beta=None if view == "rgb" else s.cotrain_flow_beta,
        lr=s.cotrain_lr,
    )


def check_init(config) -> None:
    checks.check_view(config.train.view)
    checks.check_training(config)
    checks.check_data(config, (config.train.view,))
    if config.train.init_from:
        checks.check_stage_source(config.train.init_from, "train.init_from", config.train.view, config.model)


def check_cotrain(config) -> None:
    view = config.train.view
    checks.check_view(view)
    checks.check_training(config)
    checks.check_data(config, (view, other_view(view)))
    checks.check_stage_source(config.train.init_from, "train.init_from", view, config.model)
    checks.check_stage_source(config.train.other_from, "train.other_from", other_view(view), config.model)


def check_export(config) -> None:
    checks.check_encoder_item(config.export.encoder, "export.encoder")
    checks.check_stage_source(config.export.source, "export.source", None)


def run_init(config, workdir) -> dict:
    return run_stage(config, workdir, init_stage(config, config.train.view, config.train.init_from))


def run_cotrain(config, workdir) -> dict:
    view, tc = config.train.view, config.train
    return run_stage(
        config,
        workdir,
        cotrain_stage(config, stage_name(view, cotrain=True), view, tc.init_from, tc.other_from),
    )


def run_export(config, workdir) -> dict:
    manifest = export_stage(config.export.source, workdir, config.export.encoder)
    console.say(f"exported the {manifest['view']} encoder of {config.export.source} to {workdir}")
    return manifest


def schedule_stages(config, workdir: str | Path) -> list[Stage]:
    """init RGB, init flow (each unless schedule.init_from_<view> gives it), then per cycle
    co-training of RGB (flow frozen) and of flow (RGB frozen)."""
    wd = Path(workdir)
    stages = [init_stage(config, v) for v in ("rgb", "flow") if not config.schedule.get(f"init_from_{v}")]
    last = evaluation.init_sources(config, wd)
    for cycle in range(1, config.schedule.cotrain_cycles + 1):
        for view in ("rgb", "flow"):
            name = stage_name(view, cycle)
            stages.append(cotrain_stage(config, name, view, last[view], last[other_view(view)]))
            last[view] = str(wd / name)
    return stages


def check_schedule(config) -> None:
    checks.check_training(config)
    checks.check_data(config, ("rgb", "flow"))
    for view in ("rgb", "flow"):
        key = f"init_from_{view}"
        if config.schedule.get(key):
            checks.check_stage_source(config.schedule[key], f"schedule.{key}", view, config.model)
    if config.schedule.cotrain_cycles < 0 or config.schedule.init_epochs < 1:
        raise ConfigError("schedule.init_epochs must be >= 1 and schedule.cotrain_cycles >= 0")
    evaluation.check_schedule_evaluation(config)


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


def check_schedule_lengths(stages: list[Stage], wd: Path) -> None:
    """A finished stage asked for more epochs is extended only while no later stage has started
    from it (they would have been trained from the shorter one)."""
    for i, stage in enumerate(stages):
        ran = finished_epochs(wd / stage.name)
        started = [s.name for s in stages[i + 1 :] if (wd / s.name / checkpoints.CHECKPOINT_DIR).is_dir()]
        if ran is not None and ran < stage.epochs and started:
            raise ConfigError(
                f"{stage.name} in {wd} finished {ran} epochs and the config asks for {stage.epochs}, but "
                f"{', '.join(started)} already trained from it. Keep its length, or extend it on its own "
                f"(its mode's config with --workdir={wd / stage.name}) and start a new schedule workdir from "
                f"it (schedule.init_from_<view> for an initialization)"
            )


def run_schedule(config, workdir) -> dict:
    """Every stage in its own sub-workdir (finished ones are skipped), both views exported, then
    the evaluation table of schedule.eval_stages x schedule.eval_protocols."""
    wd = Path(workdir)
    results = {}
    stages = schedule_stages(config, wd)
    check_schedule_lengths(stages, wd)
    for stage in stages:
        done = finished_epochs(wd / stage.name) == stage.epochs
        results[stage.name] = run_stage(config, wd / stage.name, stage)  # returns at once when finished
        if not done and config.get("report", True) and jax.process_index() == 0:
            report.make_report(wd)  # a running schedule has a current report
    last = {stage.view: wd / stage.name for stage in stages}  # each view's latest stage
    for view, path in last.items():
        _export_once(path, wd / "export" / view, config.export.encoder)
    summary = {"stages": results, "exports": {v: str(wd / "export" / v) for v in last}}
    if config.schedule.eval_stages and config.schedule.eval_protocols:
        summary["evaluation"] = evaluation.evaluate_stages(config, wd)
    if jax.process_index() == 0:
        (wd / "schedule.json").write_text(json.dumps(summary, indent=1))
    if "evaluation" in summary:
        console.say(f"evaluation on {config.data.name} in {config.data.dir}:")
        console.say(evaluation.format_table(summary["evaluation"]))
    return summary
