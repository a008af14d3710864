"""One training stage: initialization or co-training of one view, in its own workdir.

A stage lives in WORKDIR (TensorBoard events, checkpoints/, metrics.json); started again with the
same config it resumes from its last checkpoint, and a finished stage returns its summary before
anything is built or compiled. The batches run through the one loop (training/loop.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
from absl import logging

from cvtcl_jax import checkpoints, console, optim
from cvtcl_jax.data import training_clips
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import load_dataset_info
from cvtcl_jax.models import encoder_from_config, weight_settings
from cvtcl_jax.sharding import make_mesh
from cvtcl_jax.state import FrozenEncoder, NewState, TrainState, new_state
from cvtcl_jax.steps import ContrastConfig, jit_train_step, make_train_step
from cvtcl_jax.training import resume
from cvtcl_jax.training.trainer import Checkpointing, Trainer

# A held-out check run during training: the query encoder's variables {'params', 'batch_stats'}
# -> {metric: value}. The modes pass the evaluation's retrieval (eval/training_check.py).
Evaluator = Callable[[dict], dict]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training run of one view.

    init_from: workdir of this view's previous stage (or of imported weights), whose encoders it
      starts from (co-training; an initialization continued); None: a fresh network.
    other_from: workdir of the other view's stage, whose network ranks the queue (co-training).
    key_from: the item of init_from the key encoder starts from: 'encoder' (a copy of the query
      encoder, as CoCLR) or 'ema_encoder' (the previous stage's key encoder).
    other_encoder: the item of other_from that ranks: 'encoder' (the query network, as CoCLR's
      sampler) or 'ema_encoder' (the key network).
    beta: overrides config.contrast.beta (the flow co-training run uses 0, docs/method.md §3).
    lr: overrides config.optim.lr (schedule.cotrain_lr for the co-training runs).
    """

    name: str
    view: str
    epochs: int
    decay_epochs: tuple[float, ...] = ()
    other_view: str | None = None
    init_from: str | None = None
    other_from: str | None = None
    key_from: str = "encoder"
    other_encoder: str = "encoder"
    beta: float | None = None
    lr: float | None = None

    @property
    def cotrain(self) -> bool:
        return self.other_view is not None

    @property
    def views(self) -> tuple[str, ...]:
        """The views its batches hold: its own, and the frozen one's when co-training."""
        return (self.view, self.other_view) if self.cotrain else (self.view,)


def other_view(view: str) -> str:
    return "flow" if view == "rgb" else "rgb"


def stage_name(view: str, cycle: int | None = None, cotrain: bool = False) -> str:
    """A stage's name, which is also its directory in a schedule's workdir: `init_<view>`, the
    schedule's `cotrain<cycle>_<view>`, or the cotrain mode's single run `cotrain_<view>`
    (cotrain and no cycle)."""
    if cycle is None and not cotrain:
        return f"init_{view}"
    return f"cotrain{cycle or ''}_{view}"


def clip_spec(config, ltcl: bool = True) -> ClipSpec:
    d = config.data
    return ClipSpec(d.num_frames, d.crop_size, d.num_segments if ltcl else 0, d.segment_len)


def contrast_config(config, beta: float | None = None) -> ContrastConfig:
    fields = dict(config.contrast)
    if beta is not None:
        fields["beta"] = beta
    return ContrastConfig(**fields)


def _flat_hparams(config) -> dict:
    out = {}

    def walk(prefix, node):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            else:
                out[key] = v if isinstance(v, int | float | str | bool) else str(v)

    walk("", checkpoints.config_json(config))
    return out


def _encoder_template(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def source_model_config(workdir: str | Path) -> dict:
    """The model config a stage (or an import) in `workdir` was written with."""
    return dict(checkpoints.stage_info(workdir)["config"].get("model", {}))


def with_weight_settings(model_cfg, source: str | Path | None, what: str) -> dict:
    """model_cfg with the settings that belong to the weights (BN epsilon, input channel order)
    taken from those in `source` (a stage or import workdir; None: model_cfg's own), saying so
    where they differ from model_cfg's."""
    model_cfg = dict(model_cfg)
    if not source:
        return model_cfg
    theirs, ours = weight_settings(source_model_config(source)), weight_settings(model_cfg)
    if theirs != ours:
        console.warn(f"{what} runs the weights of {source} with their own {theirs} (the config says {ours})")
    return {**model_cfg, **theirs}


def stage_config(config, stage: Stage):
    """The config a stage trains with: config.model's weight settings taken from init_from's
    weights, so its checkpoints, exports and checks run them as they were trained."""
    model_cfg = with_weight_settings(config.model, stage.init_from, stage.name)
    if model_cfg == dict(config.model):
        return config
    config = config.copy_and_resolve_references()
    config.model.update(model_cfg)
    return config


def other_model_config(config, stage: Stage) -> dict:
    """The frozen network's model config: config.model with other_from's weight settings."""
    return with_weight_settings(
        config.model, stage.other_from, f"{stage.name}'s frozen {stage.other_view} network"
    )


def start_from(new: NewState, stage: Stage) -> TrainState:
    """A stage's first state when it starts from init_from's encoders: the query encoder is
    init_from's `encoder`, the key encoder its `stage.key_from` item (restored on its own, so the
    two never share a buffer of the donated state); optimiser and queue fresh."""
    template = _encoder_template(new.template)
    enc = checkpoints.restore_encoder(stage.init_from, template, "encoder")
    key = checkpoints.restore_encoder(stage.init_from, template, stage.key_from)
    return new.around(enc, key)


def frozen_encoder(state, stage: Stage) -> FrozenEncoder:
    """The other view's network of a co-training stage, restored into `state`'s placement."""
    return FrozenEncoder(
        **checkpoints.restore_encoder(stage.other_from, _encoder_template(state), stage.other_encoder)
    )


def finished_summary(workdir: str | Path) -> dict | None:
    """The summary of a stage in `workdir` that has run to its end, or None; reads metadata only."""
    workdir = Path(workdir)
    try:
        info = checkpoints.stage_info(workdir)
    except checkpoints.CheckpointError:
        return None
    if not info["progress"].get("done"):
        return None
    if (workdir / "metrics.json").is_file():
        return json.loads((workdir / "metrics.json").read_text())
    p = info["progress"]
    return {
        "stage": p.get("stage"),
        "view": p.get("view"),
        "batches": info["step"],
        "retrieval": p.get("retrieval"),
    }


def finished_epochs(workdir: str | Path) -> int | None:
    """The epochs a finished stage in `workdir` ran (None: no stage, or not finished)."""
    try:
        progress = checkpoints.stage_info(workdir)["progress"]
    except checkpoints.CheckpointError:
        return None
    return round(progress["epoch"]) if progress.get("done") else None


def resume_history(config, workdir: Path, stage: Stage, total: int) -> list[dict]:
    """The history entries a (re)start of `stage` adds: allowed config changes, a new length.
    Raises ResumeError for changes that are not allowed or a length shorter than what ran."""
    try:
        info = checkpoints.stage_info(workdir)
    except checkpoints.CheckpointError:
        return []
    ran = info["step"]
    if total < ran:
        raise resume.ResumeError(
            f"{stage.name} in {workdir} has run {ran} batches; the config asks for {total} "
            f"({stage.epochs} epochs): a stage is not shortened. Ask for at least as many epochs, or "
            "export or evaluate one of its checkpoints instead"
        )
    allowed = config.get("resume", {}).get("allow_changes")
    saved, new = info["config"], checkpoints.config_json(config)
    changes = resume.check(stage.name, workdir, saved, new, allowed, stage.cotrain)
    if changes:
        console.warn(f"{stage.name} resumes with changes allowed by resume.allow_changes: {changes}")
    longer = (round(info["progress"].get("epoch", 0)), stage.epochs) if info["progress"].get("done") else None
    return [resume.history_entry(ran, changes, longer)] if changes or longer else []


def train_stage(config, workdir: str | Path, stage: Stage, evaluate: Evaluator | None = None) -> dict:
    """Trains `stage` in `workdir` to its last epoch (resuming if checkpoints exist; a finished
    stage asked for more epochs continues, resume.py).

    evaluate: the held-out check run every train.retrieval_every_epochs (0: never) and at the end.
    Returns the summary also written to WORKDIR/metrics.json.
    """
    ran = finished_epochs(workdir)
    if ran is not None and ran >= stage.epochs:
        return _finished(workdir, stage, ran)
    config = stage_config(config, stage)
    workdir = Path(workdir)
    trainer = Trainer(
        name=stage.name,
        config=config,
        info=load_dataset_info(config.data.dir, config.data.name),
        mesh=make_mesh(),
        workdir=workdir,
        epochs=stage.epochs,
        lr=stage.lr or config.optim.lr,
        decay_epochs=stage.decay_epochs,
        optimizer_fn=lambda schedule: optim.adam_l2(schedule, config.optim.weight_decay),
        decay_factor=config.optim.decay_factor,
    )
    history = resume_history(config, workdir, stage, trainer.total)
    if ran is not None:
        console.warn(f"{stage.name} finished {ran} epochs; extending it to {stage.epochs} as the config asks")
    workdir.mkdir(parents=True, exist_ok=True)
    model = encoder_from_config(config.model, stage.view)
    ccfg = contrast_config(config, stage.beta)
    spec = clip_spec(config, ltcl=ccfg.use_ltcl)
    new = new_state(
        trainer.mesh,
        model,
        trainer.optimizer,
        (spec.num_frames, spec.crop_size, spec.crop_size, 3),
        config.queue_size,
        config.global_batch,
        trainer.seed,
    )
    console.say(_announcement(trainer, stage))
    started = time.perf_counter()
    every = config.train.retrieval_every_epochs
    lr_key = "schedule.cotrain_lr" if stage.lr else "optim.lr"
    _, progress = trainer.fit(
        new.template,
        _checkpointing(config),
        functools.partial(_make_step, trainer, stage, model, ccfg, new.template),
        functools.partial(training_clips.pretrain_dataset, views=stage.views),
        spec,
        start=functools.partial(_start, config, stage, new),
        resumed=functools.partial(_resumed, stage, history),
        clips_per_batch=config.global_batch,
        evaluate=None if evaluate is None or not every else lambda state: evaluate(_encoder_template(state)),
        evaluate_every=every * trainer.steps_per_epoch,
        on_divergence=f"Lower {lr_key} (now {trainer.lr}) or raise contrast.tau.",
    )
    result = _result(workdir, stage, trainer.total, progress)
    console.say(
        f"{stage.name}: done in {console.duration(time.perf_counter() - started)}, {_outcome(result)}"
    )
    return result


def _checkpointing(config) -> Checkpointing:
    """A stage's checkpoint format: the train state's items, with the config it trains with."""
    config_json = checkpoints.config_json(config)
    return Checkpointing(
        checkpoints.ITEMS,
        checkpoints.restore_state,
        lambda mngr, n, state, progress: checkpoints.save(mngr, n, state, config_json, progress),
    )


def _start(config, stage: Stage, new: NewState, _template, writer) -> tuple[object, dict]:
    """A stage's first state and progress without a checkpoint: its hyperparameters written, a
    random network or init_from's encoders when it has them."""
    writer.write_hparams(_flat_hparams(config))
    if not stage.init_from:
        state = new.random()
    else:
        state = start_from(new, stage)
        logging.info(
            "%s starts from the encoders of %s (key encoder from its %s)",
            stage.name,
            stage.init_from,
            stage.key_from,
        )
    return state, {"stage": stage.name, "view": stage.view}


def _resumed(stage: Stage, history: list[dict], progress: dict) -> dict:
    """A restored stage's progress with this start's history entries added."""
    console.warn(f"resumed {stage.name} from its checkpoint at batch {progress['batches']}")
    return {**progress, "history": [*progress.get("history", []), *history]}


def _make_step(trainer: Trainer, stage: Stage, model, ccfg: ContrastConfig, shapes, state) -> Callable:
    """The stage's jitted step (state, batch) -> (state, metrics); co-training's frozen network,
    restored into `state`'s placement, bound to it."""
    config = trainer.config
    other = None
    if stage.cotrain:
        other = encoder_from_config(other_model_config(config, stage), stage.other_view)
    step_fn = jit_train_step(
        make_train_step(model, ccfg, trainer.optimizer, trainer.schedule, other_model=other),
        trainer.mesh,
        shapes,
        cotrain=stage.cotrain,
    )
    if not stage.cotrain:
        return step_fn
    frozen = frozen_encoder(state, stage)
    logging.info("%s: %s's %s ranks", stage.name, stage.other_from, stage.other_encoder)
    return lambda state, batch: step_fn(state, batch, frozen)


def _finished(workdir: str | Path, stage: Stage, ran: int) -> dict:
    """The summary of a stage that has run `ran` >= stage.epochs epochs, read, not trained again."""
    if ran > stage.epochs:
        raise resume.ResumeError(
            f"{stage.name} in {workdir} finished {ran} epochs; the config asks for {stage.epochs}: a "
            "finished stage is not shortened. Ask for at least as many, or export or evaluate one of "
            "its checkpoints instead"
        )
    console.say(f"{stage.name}: finished in {workdir}, not training it again")
    return finished_summary(workdir)


def _announcement(trainer: Trainer, stage: Stage) -> str:
    """The console's line for a stage that starts: views, length, devices."""
    return (
        f"{stage.name}: the {stage.view} view"
        + (f" (the {stage.other_view} view frozen)" if stage.cotrain else "")
        + f", {stage.epochs} epochs x {trainer.steps_per_epoch} steps of {trainer.config.global_batch} "
        f"clips on {jax.device_count()} device(s)"
        + (f", {jax.process_count()} hosts" if jax.process_count() > 1 else "")
    )


def _result(workdir: Path, stage: Stage, total: int, progress: dict) -> dict:
    """A finished stage's summary, written to WORKDIR/metrics.json."""
    result = {
        "stage": stage.name,
        "view": stage.view,
        "other_view": stage.other_view,
        "batches": total,
        "epochs": stage.epochs,
        "final": progress.get("final", {}),
        "retrieval": progress.get("retrieval", []),
        "padded_videos": progress.get("padded_videos", 0),
        "checkpoint": str(workdir / checkpoints.CHECKPOINT_DIR / str(total)),
    }
    if jax.process_index() == 0:
        (workdir / "metrics.json").write_text(json.dumps(result, indent=1))
    return result


def _outcome(result: dict) -> str:
    """A finished stage in a few words: its final loss and its last retrieval check."""
    loss = result["final"].get("loss")
    words = [f"loss {loss:.3f}"] if loss is not None else []
    if result["retrieval"]:
        words.append(f"R@1 {result['retrieval'][-1]['R@1']:.1f}")
    return ", ".join(words) or f"{result['batches']} batches"
