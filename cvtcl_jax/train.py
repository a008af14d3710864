"""The training loop of one stage: initialization or co-training of one view.

Read top to bottom: set-up, restore, input, loop (step, checks, logging, retrieval, checkpoints).
A stage lives in its own workdir (TensorBoard events, checkpoints/, metrics.json); started again
with the same config it resumes from its last checkpoint, and a finished stage returns at once.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from cvtcl_jax import checkpoints, features, optim, retrieval
from cvtcl_jax.data import device_augment, pipeline
from cvtcl_jax.data.augment import AugmentConfig
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import load_dataset_info
from cvtcl_jax.data.random_batches import empty_eval_batch
from cvtcl_jax.models import ContrastiveEncoder
from cvtcl_jax.sharding import make_mesh, prefetch_to_mesh, state_sharding
from cvtcl_jax.state import FrozenEncoder, create_train_state
from cvtcl_jax.steps import ContrastConfig, jit_train_step, make_train_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training run of one view.

    init_from: workdir of this view's previous stage, whose encoders it starts from (co-training).
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


def clip_spec(config, ltcl: bool = True) -> ClipSpec:
    d = config.data
    return ClipSpec(d.num_frames, d.crop_size, d.num_segments if ltcl else 0, d.segment_len)


def contrast_config(config, beta: float | None = None) -> ContrastConfig:
    fields = dict(config.contrast)
    if beta is not None:
        fields["beta"] = beta
    return ContrastConfig(**fields)


def stage_done(workdir: str | Path) -> bool:
    """Whether a stage's latest checkpoint is its last one."""
    try:
        return bool(checkpoints.stage_info(workdir)["progress"].get("done"))
    except checkpoints.CheckpointError:
        return False


def _stage_seed(config, stage: Stage) -> int:
    return (int(config.seed) * 1_000_003 + zlib.crc32(stage.name.encode())) % 2**31


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


def run_retrieval(config, info, view, variables, feature_fn, mesh, max_videos=None) -> dict:
    """R@k of test videos querying train videos with the backbone's features (docs/method.md §6)."""
    spec = clip_spec(config, ltcl=False)
    local_batch = config.global_batch // jax.process_count()
    sets = {}
    for subset in ("train", "test"):
        ds = pipeline.eval_dataset(
            info,
            split=config.data.split,
            subset=subset,
            views=(view,),
            local_batch=local_batch,
            spec=spec,
            stride=config.data.eval_stride,
            crops="center",
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            threads=config.data.threads,
            max_videos=max_videos,
        )
        rows = features.extract(
            feature_fn,
            variables,
            ds.as_numpy_iterator(),
            mesh,
            view,
            empty_eval_batch(local_batch, spec, (view,)),
        )
        sets[subset] = retrieval.video_features(rows["features"], rows["video_index"], rows["label"])
    _, train_labels, train_feats = sets["train"]
    _, test_labels, test_feats = sets["test"]
    return retrieval.recall_at_k(test_feats, test_labels, train_feats, train_labels)


def _encoder_template(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def cotrain_start(state, stage: Stage):
    """A co-training stage's first state and frozen network. -> (state, FrozenEncoder).

    The trained view's query encoder is init_from's `encoder`; its key encoder init_from's
    `stage.key_from` item; optimiser and queue stay fresh. The frozen network is other_from's
    `stage.other_encoder` item. `state` (fresh, sharded) fixes the structure and placement.
    """
    template = _encoder_template(state)
    enc = checkpoints.restore_encoder(stage.init_from, template, "encoder")
    key = checkpoints.restore_encoder(stage.init_from, template, stage.key_from)
    state = state.replace(
        params=enc["params"],
        batch_stats=enc["batch_stats"],
        ema_params=jax.tree.map(jnp.copy, key["params"]),
        ema_batch_stats=jax.tree.map(jnp.copy, key["batch_stats"]),
    )
    return state, frozen_encoder(state, stage)


def frozen_encoder(state, stage: Stage) -> FrozenEncoder:
    """The other view's network of a co-training stage, restored into `state`'s placement."""
    return FrozenEncoder(
        **checkpoints.restore_encoder(stage.other_from, _encoder_template(state), stage.other_encoder)
    )


def train_stage(config, workdir: str | Path, stage: Stage) -> dict:
    """Trains `stage` in `workdir` to its last epoch (resuming if checkpoints exist).

    Returns the summary also written to WORKDIR/metrics.json.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tc = config.train

    # ------------------------------------------------------------------ set-up
    mesh = make_mesh()
    info = load_dataset_info(config.data.dir)
    num_videos = info.subset(config.data.split, "train").num_videos
    steps_per_epoch = num_videos // config.global_batch
    total = stage.epochs * steps_per_epoch
    model = ContrastiveEncoder.from_config(config.model)
    ccfg = contrast_config(config, stage.beta)
    spec = clip_spec(config, ltcl=ccfg.use_ltcl)
    base_lr = stage.lr or config.optim.lr
    decay = config.optim.decay_factor
    schedule = optim.step_decay_schedule(base_lr, steps_per_epoch, stage.decay_epochs, decay)
    optimizer = optim.adam_l2(schedule, config.optim.weight_decay)
    clip_shape = (spec.num_frames, spec.crop_size, spec.crop_size, 3)
    seed = _stage_seed(config, stage)

    def init(rng):
        return create_train_state(model, optimizer, rng, clip_shape, config.queue_size, config.global_batch)

    shapes = jax.eval_shape(init, jax.random.key(seed))
    state = jax.jit(init, out_shardings=state_sharding(mesh, shapes))(jax.random.key(seed))
    logging.info(
        "stage %s: %s view%s, %d epochs x %d steps of %d clips, %d processes, %d devices",
        stage.name,
        stage.view,
        f" (other view {stage.other_view} frozen)" if stage.cotrain else "",
        stage.epochs,
        steps_per_epoch,
        config.global_batch,
        jax.process_count(),
        jax.device_count(),
    )

    # ------------------------------------------------------------------ restore
    mngr = checkpoints.manager(workdir, keep=tc.keep_checkpoints)
    progress = {"batches": 0, "padded_videos": 0, "retrieval": []}
    frozen = ()
    if mngr.latest_step() is not None:
        state, progress = checkpoints.restore_state(mngr, state)
        logging.info("resumed %s from its checkpoint at batch %d", stage.name, progress["batches"])
        if stage.cotrain:
            frozen = (frozen_encoder(state, stage),)
    elif stage.cotrain:
        state, other = cotrain_start(state, stage)
        frozen = (other,)
        logging.info(
            "%s starts from the encoders of %s (key encoder from its %s); %s's %s ranks",
            stage.name,
            stage.init_from,
            stage.key_from,
            stage.other_from,
            stage.other_encoder,
        )
    start = int(progress["batches"])
    if progress.get("done") or start >= total:
        mngr.close()
        if (workdir / "metrics.json").is_file():
            return json.loads((workdir / "metrics.json").read_text())
        return {
            "stage": stage.name,
            "view": stage.view,
            "batches": start,
            "retrieval": progress.get("retrieval"),
        }

    step_fn = jit_train_step(
        make_train_step(model, ccfg, optimizer, schedule, other_model=model if stage.cotrain else None),
        mesh,
        shapes,
        cotrain=stage.cotrain,
    )

    # ------------------------------------------------------------------ input
    views = (stage.view, stage.other_view) if stage.cotrain else (stage.view,)
    local_batch = config.global_batch // jax.process_count()
    train_ds = pipeline.pretrain_dataset(
        info,
        split=config.data.split,
        subset="train",
        views=views,
        local_batch=local_batch,
        spec=spec,
        aug=AugmentConfig(**config.data.aug),
        seed=seed,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        shuffle_buffer=config.data.shuffle_buffer,
        threads=config.data.threads,
    )
    batches = prefetch_to_mesh(
        train_ds.as_numpy_iterator(),
        mesh,
        config.data.prefetch,
        host_keys=("padded",),
        transform=device_augment.make_batch_augmenter(mesh, config.data.aug.blur_kernel_size, spec.crop_size),
    )

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start == 0:
        writer.write_hparams(_flat_hparams(config))
    report = periodic_actions.ReportProgress(
        num_train_steps=total, writer=writer, every_steps=tc.log_every_steps
    )
    feature_fn = features.make_feature_fn(features.backbone_from_config(config.model), mesh)
    config_json = checkpoints.config_json(config)

    def check(batch_no, metrics) -> dict:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = [k for k, v in host.items() if not np.isfinite(v)]
        if "loss" in bad or "grad_norm" in bad:
            mngr.wait_until_finished()
            raise TrainingDiverged(
                f"stage {stage.name}: {', '.join(bad)} became NaN/Inf at batch {batch_no} "
                f"(loss {host['loss']}, grad_norm {host.get('grad_norm')}). Training stopped; the last "
                f"good checkpoint (batch {mngr.latest_step()}) is kept in "
                f"{workdir / checkpoints.CHECKPOINT_DIR}. "
                f"Lower {'schedule.cotrain_lr' if stage.lr else 'optim.lr'} (now {base_lr}) or raise "
                "contrast.tau, then run the same command to resume from it"
            )
        return host

    # ------------------------------------------------------------------ loop
    window: list[dict] = []
    pending = None
    last_log = (start, time.perf_counter())
    summary: dict = {}
    padded = int(progress.get("padded_videos", 0))
    history = list(progress.get("retrieval", []))
    retrieval_every = tc.retrieval_every_epochs * steps_per_epoch
    for i in range(start, total):
        batch = next(batches)
        padded += int(np.sum(batch.pop("padded")))
        state, metrics = step_fn(state, batch, *frozen)
        if pending is not None:  # the previous step's metrics: checked while this one runs
            window.append(check(*pending))
        n = i + 1
        pending = (n, metrics)
        report(n)
        save_now = n % tc.checkpoint_every_steps == 0 or n == total
        log_now = n % tc.log_every_steps == 0 or n == total
        retrieve_now = bool(retrieval_every) and (n % retrieval_every == 0 or n == total)
        if save_now or log_now or retrieve_now:
            window.append(check(*pending))
            pending = None
        if log_now and window:
            now = time.perf_counter()
            rate = (n - last_log[0]) / max(now - last_log[1], 1e-9)
            summary = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
            summary.update(
                clips_per_sec=rate * config.global_batch,
                eta_minutes=(total - n) / max(rate, 1e-9) / 60,
                epoch=n / steps_per_epoch,
                padded_videos=padded,
            )
            writer.write_scalars(n, {f"train/{k}": v for k, v in summary.items()})
            logging.info(
                "%s batch %d/%d: loss %.4f, inst_top1 %.3f, %.1f clips/s",
                stage.name,
                n,
                total,
                summary["loss"],
                summary["inst_top1"],
                summary["clips_per_sec"],
            )
            window, last_log = [], (n, now)
        if retrieve_now:
            with report.timed("retrieval"):
                variables = features.backbone_variables(_encoder_template(state))
                recall = run_retrieval(
                    config, info, stage.view, variables, feature_fn, mesh, tc.retrieval_max_videos
                )
            writer.write_scalars(n, {f"retrieval/{k}": v for k, v in recall.items()})
            history.append({"batch": n, "epoch": n / steps_per_epoch, **recall})
            logging.info("%s batch %d retrieval: %s", stage.name, n, recall)
        if save_now:
            with report.timed("checkpoint"):
                progress = {
                    "stage": stage.name,
                    "view": stage.view,
                    "epoch": n / steps_per_epoch,
                    "done": n == total,
                    "padded_videos": padded,
                    "retrieval": history,
                }
                checkpoints.save(mngr, n, state, config_json, progress)
    mngr.wait_until_finished()
    mngr.close()
    writer.flush()

    result = {
        "stage": stage.name,
        "view": stage.view,
        "other_view": stage.other_view,
        "batches": total,
        "epochs": stage.epochs,
        "final": summary,
        "retrieval": history,
        "padded_videos": padded,
        "checkpoint": str(workdir / checkpoints.CHECKPOINT_DIR / str(total)),
    }
    if jax.process_index() == 0:
        (workdir / "metrics.json").write_text(json.dumps(result, indent=1))
    return result
