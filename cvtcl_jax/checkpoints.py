"""Orbax checkpoints of a training stage, as named items a later stage can restore separately.

  encoder       query encoder f_q + g_q: {'params', 'batch_stats'}
  ema_encoder   key encoder f_k + g_k:   {'params', 'batch_stats'}
  optimizer     {'opt_state', 'step', 'rng'}
  queue         the key queue
  config        the run's config (JSON)
  progress      {'batches': batches consumed, 'epoch', 'done': stage finished} (JSON)

Checkpoints are numbered by batches consumed, so a restarted run continues the input stream at
the right sample. Co-training and evaluation restore only `encoder` / `ema_encoder` (+ config).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from cvtcl_jax import console
from cvtcl_jax.state import TrainState

ENCODER_ITEMS = ("encoder", "ema_encoder")  # the query network f_q + g_q, the key network f_k + g_k
ITEMS = (*ENCODER_ITEMS, "optimizer", "queue", "config", "progress")
CHECKPOINT_DIR = "checkpoints"

# Our state is small (tens of MB) and replicated over the devices. Orbax's default on CPU/TPU
# splits each replicated array over the replicas for the device-to-host copy, which compiles a
# slicing program per array and device: ~25 s before the first save with 8 devices, for no gain
# at this size. One replica writes each array instead.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
)


class CheckpointError(ValueError):
    """A checkpoint that a config points at is missing or does not fit."""


def manager(
    workdir: str | Path, keep: int = 3, read_only: bool = False, item_names: tuple[str, ...] = ITEMS
) -> ocp.CheckpointManager:
    """The stage's CheckpointManager (WORKDIR/checkpoints), keeping the last `keep` steps.

    item_names: a training stage's ITEMS by default; classifier runs save ('state', 'progress').
    """
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
    return ocp.CheckpointManager(
        Path(workdir).absolute() / CHECKPOINT_DIR, options=options, item_names=item_names
    )


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save(mngr: ocp.CheckpointManager, batches: int, state: TrainState, config: dict, progress: dict) -> None:
    """Saves every item at step `batches` (asynchronously; `mngr.wait_until_finished()` to block)."""
    args = ocp.args.Composite(
        encoder=ocp.args.StandardSave({"params": state.params, "batch_stats": state.batch_stats}),
        ema_encoder=ocp.args.StandardSave({"params": state.ema_params, "batch_stats": state.ema_batch_stats}),
        optimizer=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step, "rng": state.rng}),
        queue=ocp.args.StandardSave(state.queue),
        config=ocp.args.JsonSave(config),
        progress=ocp.args.JsonSave({**progress, "batches": batches}),
    )
    mngr.save(batches, args=args, force=True)


def save_encoders(workdir: str | Path, encoder: dict, ema_encoder: dict, config: dict, progress: dict):
    """A stage checkpoint of encoders only (step 0; no optimiser or queue): weights trained
    elsewhere, which a stage can start from and an export or evaluation can read."""
    with manager(workdir, keep=1) as mngr:
        args = ocp.args.Composite(
            encoder=ocp.args.StandardSave(encoder),
            ema_encoder=ocp.args.StandardSave(ema_encoder),
            config=ocp.args.JsonSave(config),
            progress=ocp.args.JsonSave({**progress, "batches": 0}),
        )
        mngr.save(0, args=args, force=True)
        mngr.wait_until_finished()


UNREADABLE = ".unreadable"  # suffix of a checkpoint step set aside because it cannot be read


def restore_state(mngr: ocp.CheckpointManager, state: TrainState, step: int | None = None):
    """(state restored into `state`'s structure and shardings, progress dict) at `step`, or at the
    latest step that can be read: an unreadable step (a truncated or damaged file) is reported and
    set aside as `<step>.unreadable` beside the others, its files kept, and the step before it
    is used. Raises CheckpointError when no step can be read."""
    if step is not None:
        return _restore_state(mngr, state, step)
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            return _restore_state(mngr, state, step)
        except Exception as e:  # TensorStore, Orbax and OS errors of a damaged step alike
            aside = Path(mngr.directory) / f"{step}{UNREADABLE}"
            if jax.process_index() == 0:
                (Path(mngr.directory) / str(step)).rename(aside)
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices(f"checkpoint step {step} set aside")
            mngr.reload()
            reason = str(e).splitlines()[0][:300] if str(e) else ""
            console.warn(
                f"checkpoint step {step} in {mngr.directory} cannot be read ({type(e).__name__}: {reason}); "
                f"it is kept as {aside} and the run resumes from the step before it"
            )
    raise CheckpointError(
        f"no checkpoint step in {mngr.directory} can be read (the unreadable ones are kept as "
        f"<step>{UNREADABLE}); start the stage in a new workdir"
    )


def _restore_state(mngr: ocp.CheckpointManager, state: TrainState, step: int):
    args = ocp.args.Composite(
        encoder=ocp.args.StandardRestore(
            _abstract({"params": state.params, "batch_stats": state.batch_stats})
        ),
        ema_encoder=ocp.args.StandardRestore(
            _abstract({"params": state.ema_params, "batch_stats": state.ema_batch_stats})
        ),
        optimizer=ocp.args.StandardRestore(
            _abstract({"opt_state": state.opt_state, "step": state.step, "rng": state.rng})
        ),
        queue=ocp.args.StandardRestore(_abstract(state.queue)),
        progress=ocp.args.JsonRestore(),
    )
    r = mngr.restore(step, args=args)
    restored = state.replace(
        params=r.encoder["params"],
        batch_stats=r.encoder["batch_stats"],
        ema_params=r.ema_encoder["params"],
        ema_batch_stats=r.ema_encoder["batch_stats"],
        opt_state=r.optimizer["opt_state"],
        step=r.optimizer["step"],
        rng=r.optimizer["rng"],
        queue=r.queue,
    )
    return restored, dict(r.progress)


def stage_info(workdir: str | Path) -> dict:
    """{'step', 'config', 'progress'} of a stage's latest checkpoint; CheckpointError if none."""
    path = Path(workdir) / CHECKPOINT_DIR
    if not path.is_dir():
        raise CheckpointError(
            f"no checkpoints at {path}: train that stage first, or point the config at the workdir of "
            "a finished stage"
        )
    with manager(workdir, read_only=True) as mngr:
        step = mngr.latest_step()
        if step is None:
            raise CheckpointError(
                f"{path} holds no finished checkpoint (was the run stopped before the first?)"
            )
        r = mngr.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), progress=ocp.args.JsonRestore())
        )
    return {"step": step, "config": dict(r.config), "progress": dict(r.progress)}


def restore_encoder(workdir: str | Path, template: dict, which: str = "ema_encoder") -> dict:
    """One encoder item ({'params', 'batch_stats'}) of a stage's latest checkpoint.

    template: a pytree of the same structure (arrays or ShapeDtypeStructs, with shardings) that
    fixes the restored arrays' shapes and placement. Shapes that differ raise CheckpointError.
    """
    if which not in ENCODER_ITEMS:
        raise ValueError(f"which must be 'encoder' or 'ema_encoder', got {which!r}")
    step = stage_info(workdir)["step"]
    with manager(workdir, read_only=True) as mngr:
        try:
            r = mngr.restore(
                step, args=ocp.args.Composite(**{which: ocp.args.StandardRestore(_abstract(template))})
            )
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"the {which} of {workdir} (step {step}) does not fit this model: {e}. Use the same "
                "config.model as the run that wrote it"
            ) from e
    return dict(r[which])


def config_json(config: Any) -> dict:
    """The config as a JSON-able dict (tuples become lists)."""
    return (
        json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)
    )


CLASSIFIER_ITEMS = ("state", "progress")


def save_classifier(mngr: ocp.CheckpointManager, step: int, state: Any, progress: dict) -> None:
    """A classifier run's checkpoint (linear probe on clips, finetuning): its state and progress."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave({**progress, "batches": step})
    )
    mngr.save(step, args=args, force=True)


def restore_classifier(mngr: ocp.CheckpointManager, state: Any) -> tuple[Any, dict]:
    """(state restored into `state`'s structure and shardings, progress) of the latest checkpoint."""
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state)), progress=ocp.args.JsonRestore()
    )
    r = mngr.restore(mngr.latest_step(), args=args)
    return r.state, dict(r.progress)
