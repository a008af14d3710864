"""One training stage: initialization or co-training of one view, in its own workdir.

A stage lives in WORKDIR (TensorBoard events, checkpoints/, metrics.json); started again with the
same config it resumes from its last checkpoint, and a finished stage returns its summary before
anything is built or compiled. The batches run through the one loop (training/loop.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging
from clu import metric_writers

from cvtcl_jax import checkpoints, console, optim
from cvtcl_jax.data import pipeline
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import load_dataset_info
from cvtcl_jax.models import encoder_from_config, weight_settings
from cvtcl_jax.sharding import make_mesh
from cvtcl_jax.state import FrozenEncoder, create_train_state, state_sharding
from cvtcl_jax.steps import ContrastConfig, jit_train_step, make_train_step
from cvtcl_jax.training import resume
from cvtcl_jax.training.inputs import batches_per_epoch, device_batches, run_seed
from cvtcl_jax.training.loop import Loop

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


def start_from(state, stage: Stage):
    """A stage's first state when it starts from init_from's encoders: the query encoder is
    init_from's `encoder`, the key encoder its `stage.key_from` item; optimiser and queue stay
    fresh. `state` (fresh, sharded) fixes the structure and placement."""
    template = _encoder_template(state)
    enc = checkpoints.restore_encoder(stage.init_from, template, "encoder")
    key = checkpoints.restore_encoder(stage.init_from, template, stage.key_from)
    return state.replace(
        params=enc["params"],
        batch_stats=enc["batch_stats"],
        ema_params=jax.tree.map(jnp.copy, key["params"]),
        ema_batch_stats=jax.tree.map(jnp.copy, key["batch_stats"]),
    )


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
        if ran > stage.epochs:
            raise resume.ResumeError(
                f"{stage.name} in {workdir} finished {ran} epochs; the config asks for {stage.epochs}: a "
                "finished stage is not shortened. Ask for at least as many, or export or evaluate one of "
                "its checkpoints instead"
            )
        console.say(f"{stage.name}: finished in {workdir}, not training it again")
        return finished_summary(workdir)
    config = stage_config(config, stage)
    workdir = Path(workdir)
    tc = config.train

    # ------------------------------------------------------------------ set-up
    info = load_dataset_info(config.data.dir, config.data.name)
    steps_per_epoch = batches_per_epoch(info, config.global_batch)
    total = stage.epochs * steps_per_epoch
    history = resume_history(config, workdir, stage, total)
    if ran is not None:
        console.warn(f"{stage.name} finished {ran} epochs; extending it to {stage.epochs} as the config asks")
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh()
    model = encoder_from_config(config.model)
    ccfg = contrast_config(config, stage.beta)
    spec = clip_spec(config, ltcl=ccfg.use_ltcl)
    base_lr = stage.lr or config.optim.lr
    lr_key = "schedule.cotrain_lr" if stage.lr else "optim.lr"
    schedule = optim.step_decay_schedule(
        base_lr, steps_per_epoch, stage.decay_epochs, config.optim.decay_factor
    )
    optimizer = optim.adam_l2(schedule, config.optim.weight_decay)
    clip_shape = (spec.num_frames, spec.crop_size, spec.crop_size, 3)
    seed = run_seed(config.seed, stage.name)

    def init(rng):
        return create_train_state(model, optimizer, rng, clip_shape, config.queue_size, config.global_batch)

    shapes = jax.eval_shape(init, jax.random.key(seed))
    state = jax.jit(init, out_shardings=state_sharding(mesh, shapes))(jax.random.key(seed))
    console.say(
        f"{stage.name}: the {stage.view} view"
        + (f" (the {stage.other_view} view frozen)" if stage.cotrain else "")
        + f", {stage.epochs} epochs x {steps_per_epoch} steps of {config.global_batch} clips on "
        f"{jax.device_count()} device(s)"
        + (f", {jax.process_count()} hosts" if jax.process_count() > 1 else "")
    )
    started = time.perf_counter()

    with contextlib.ExitStack() as stack:
        mngr = stack.enter_context(checkpoints.manager(workdir, keep=tc.keep_checkpoints))
        writer = stack.enter_context(
            contextlib.closing(
                metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
            )
        )

        # -------------------------------------------------------------- restore
        progress = {"stage": stage.name, "view": stage.view}
        frozen = ()
        if mngr.latest_step() is not None:
            state, progress = checkpoints.restore_state(mngr, state)
            progress["history"] = [*progress.get("history", []), *history]
            console.warn(f"resumed {stage.name} from its checkpoint at batch {progress['batches']}")
            if stage.cotrain:
                frozen = (frozen_encoder(state, stage),)
        else:
            writer.write_hparams(_flat_hparams(config))
            if stage.init_from:
                state = start_from(state, stage)
                logging.info(
                    "%s starts from the encoders of %s (key encoder from its %s)",
                    stage.name,
                    stage.init_from,
                    stage.key_from,
                )
            if stage.cotrain:
                frozen = (frozen_encoder(state, stage),)
                logging.info("%s: %s's %s ranks", stage.name, stage.other_from, stage.other_encoder)
        start = int(progress.get("batches", 0))

        # -------------------------------------------------------------- step and input
        step_fn = jit_train_step(
            make_train_step(
                model,
                ccfg,
                optimizer,
                schedule,
                other_model=encoder_from_config(other_model_config(config, stage)) if stage.cotrain else None,
            ),
            mesh,
            shapes,
            cotrain=stage.cotrain,
        )
        views = (stage.view, stage.other_view) if stage.cotrain else (stage.view,)
        batches = device_batches(
            config, info, mesh, pipeline.pretrain_dataset, spec, seed, start, views=views
        )

        # -------------------------------------------------------------- loop
        config_json = checkpoints.config_json(config)
        loop = Loop(
            name=stage.name,
            step=lambda state, batch: step_fn(state, batch, *frozen),
            save=lambda mngr, n, state, progress: checkpoints.save(mngr, n, state, config_json, progress),
            mngr=mngr,
            writer=writer,
            total=total,
            steps_per_epoch=steps_per_epoch,
            log_every=tc.log_every_steps,
            checkpoint_every=tc.checkpoint_every_steps,
            clips_per_batch=config.global_batch,
            evaluate=None
            if evaluate is None or not tc.retrieval_every_epochs
            else lambda state: evaluate(_encoder_template(state)),
            evaluate_every=tc.retrieval_every_epochs * steps_per_epoch,
            on_divergence=f"Lower {lr_key} (now {base_lr}) or raise contrast.tau.",
        )
        _, progress = loop.train(state, batches, start, progress)

    result = {
        "stage": stage.name,
        "view": stage.view,
        "other_view": stage.other_view,
        "batches": total,
        "epochs": stage.epochs,
        "final": progress.get("final", {}),
        "retrieval": progress.get("retrieval", []),
        "padded_videos": progress["padded_videos"],
        "checkpoint": str(workdir / checkpoints.CHECKPOINT_DIR / str(total)),
    }
    if jax.process_index() == 0:
        (workdir / "metrics.json").write_text(json.dumps(result, indent=1))
    console.say(
        f"{stage.name}: done in {console.duration(time.perf_counter() - started)}, {_outcome(result)}"
    )
    return result


def _outcome(result: dict) -> str:
    """A finished stage in a few words: its final loss and its last retrieval check."""
    loss = result["final"].get("loss")
    words = [f"loss {loss:.3f}"] if loss is not None else []
    if result["retrieval"]:
        words.append(f"R@1 {result['retrieval'][-1]['R@1']:.1f}")
    return ", ".join(words) or f"{result['batches']} batches"
