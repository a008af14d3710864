"""What a resumed stage may change: the config saved with its checkpoints against the new one, and
its length.

Started again, a stage compares the new config with the one its latest checkpoint holds before
any work. Logging, checkpoint and evaluation cadences, evaluation settings, paths and the other
kind of stage's own settings may differ freely; anything else that shapes the model, the data,
the method or the optimiser stops the run with a table of the differences (`ResumeError`, exit
code 2), unless `resume.allow_changes` names it (a key or a section, comma-separated), which the
stage's history then records. A stage asked for more epochs than it ran continues (the
learning-rate schedule goes on as configured, a finished stage included); fewer than it has
already run are refused.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

from cvtcl_jax.models.builders import SHAPE_KEYS

# Keys (or sections, ending with ".") that may differ freely on resume.
FREE = (
    "mode",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.retrieval_every_epochs",
    "train.retrieval_max_videos",
    "train.init_from",
    "train.other_from",
    "data.dir",
    "data.threads",
    "data.prefetch",
    "data.eval_stride",
    "data.eval_crops",
    "data.ten_crop_scale",
    # Same function, other lowerings (docs/decisions.md).
    "model.remat",
    "model.pool_grad",
    "model.conv_lowering",
    # The schedule's other stages and its evaluation; a stage's own length is checked apart.
    "schedule.cotrain_cycles",
    "schedule.init_epochs",
    "schedule.cotrain_epochs",
    "schedule.init_from_rgb",
    "schedule.init_from_flow",
    "schedule.eval_stages",
    "schedule.eval_protocols",
    "eval.",
    "export.",
    "linear.",
    "finetune.",
    "demo.",
    "resume.",
    "weights.",
)
# Settings of the other kind of stage only: free for this one (an interrupted initialization
# may resume after the co-training settings were changed, and the other way round).
COTRAIN_ONLY = (
    "schedule.cotrain_lr",
    "schedule.cotrain_decay_epochs",
    "schedule.cotrain_flow_beta",
    "train.other_encoder",
)
INIT_ONLY = ("optim.decay_epochs",)
# Keys that fix the shapes of the checkpoint's arrays: no resume can change them.
SHAPES = tuple(f"model.{k}" for k in SHAPE_KEYS)


class ResumeError(ValueError):
    """The new config cannot resume the stage; the message says what differs and what to do."""


def _flat(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _matches(key: str, names) -> bool:
    return any(key == n or key.startswith(n if n.endswith(".") else n + ".") for n in names)


def differences(saved: Mapping, new: Mapping, cotrain: bool = False) -> dict[str, tuple]:
    """{key: (saved value, new value)} of the keys both configs have that differ and may not
    differ freely for a co-training (`cotrain`) or an initialization stage (JSON configs). A key
    only one of them has came or went with a new version of this code, which ran with its default
    where it was absent."""
    free = FREE + (INIT_ONLY if cotrain else COTRAIN_ONLY)
    a, b = _flat(saved), _flat(new)
    keys = sorted(set(a) & set(b))
    return {k: (a[k], b[k]) for k in keys if a[k] != b[k] and not _matches(k, free)}


def allowed_names(allow_changes: str | None) -> list[str]:
    return [n.strip() for n in (allow_changes or "").split(",") if n.strip()]


def check(
    stage: str, workdir, saved: Mapping, new: Mapping, allow_changes: str | None, cotrain: bool = False
) -> dict:
    """The changes a resume of `stage` (a co-training stage if `cotrain`) makes, once allowed:
    {key: [saved, new]} (empty: none). Raises ResumeError with the table of the others."""
    changes = differences(saved, new, cotrain)
    allowed = allowed_names(allow_changes)
    shapes = [k for k in changes if k in SHAPES]
    refused = {k: v for k, v in changes.items() if k in shapes or not _matches(k, allowed)}
    if refused:
        width = max(len(k) for k in refused)
        table = "\n".join(f"  {k:<{width}}  {v[0]!r} -> {v[1]!r}" for k, v in refused.items())
        fix = (
            f"{', '.join(shapes)} fix the checkpoint's shapes and cannot change: use another --workdir"
            if shapes
            else "Run with the saved values, choose another --workdir, or let them change with "
            f"--config.resume.allow_changes={','.join(refused)} (recorded in the stage's history)"
        )
        raise ResumeError(f"{stage} in {workdir} was trained with another config:\n{table}\n{fix}")
    return {k: [v[0], v[1]] for k, v in changes.items()}


def history_entry(batch: int, changes: Mapping | None = None, epochs: tuple[int, int] | None = None) -> dict:
    """What the stage's history records of a resume that changed something."""
    entry = {"batch": batch, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if changes:
        entry["changes"] = dict(changes)
    if epochs:
        entry["epochs"] = list(epochs)
    return entry
