"""The evaluation protocols of docs/method.md §6 from any encoder: retrieval, linear probe, finetuning.

Each protocol evaluates the view `eval.view` ('rgb', 'flow' or 'two_stream') of the encoders named
by `eval.rgb_source` / `eval.flow_source` (a stage workdir, an export directory or 'random', see
eval/sources.py) on the dataset `data.name` in `data.dir` (UCF101 or HMDB51 as data_prep builds them).
What a run leaves in its workdir: eval/store.py.

Two-stream: retrieval averages the two views' normalised video features; the classifiers average
the two views' per-video softmax. Every view is also reported on its own.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cvtcl_jax.data import training_clips
from cvtcl_jax.eval import accuracy, classifier, features, pictures, retrieval
from cvtcl_jax.eval.classifier import FinetuneModel, LinearHead
from cvtcl_jax.eval.store import TWO_STREAM, EvalRun, summary_line, views_and_fused, views_of
from cvtcl_jax.sharding import replicated
from cvtcl_jax.training.trainer import CLASSIFIER, Trainer

# ---------------------------------------------------------------------- retrieval


def _retrieval(run: EvalRun, config) -> dict:
    """R@1/5/10/20 of test videos querying train videos (docs/method.md §6); {view: result record}."""
    coclr = bool(config.eval.coclr_protocol)
    sets = {}
    for view in views_of(config.eval.view):
        backbone = run.load(view)
        train = run.clip_features(backbone, "train", "center")
        test = run.clip_features(backbone, "test", "center")
        sets[view] = retrieval.query_and_gallery(train, test, coclr, config.seed)
    if config.eval.view == TWO_STREAM:
        sets[TWO_STREAM] = retrieval.fused_sets(sets["rgb"], sets["flow"])
    settings = {
        "protocol": "coclr" if coclr else "dense",
        "crops": "center",
        **run.clip_settings(),
    }
    results = {}
    for view in views_and_fused(config.eval.view):
        results[view] = run.write_result(view, retrieval.recall(sets[view]), settings)
    pictures.write_neighbours(run, config.eval.view, sets[config.eval.view])
    run.writer.flush()
    logging.info(summary_line(run.protocol, results))
    return results


# ---------------------------------------------------------------------- classifiers


def _fit_cached_head(run: EvalRun, view: str, train: dict) -> tuple[dict, int]:
    """The linear probe on cached features (see classifier.fit_linear_head); its curves to TB."""
    lc = run.config.linear

    def log(epoch, metrics):
        run.writer.write_scalars(epoch, {f"linear_probe/{view}/train/{k}": v for k, v in metrics.items()})

    return classifier.fit_linear_head(
        train["features"],
        train["label"],
        run.info.num_classes,
        epochs=lc.epochs,
        lr=lc.lr,
        momentum=lc.momentum,
        weight_decay=lc.weight_decay,
        decay_epochs=lc.decay_epochs,
        batch=run.config.global_batch,
        seed=run.config.seed,
        log=log,
    )


def _train_on_clips(
    run: EvalRun,
    view: str,
    apply: Callable,
    variables: dict,
    optimizer_fn: Callable,
    lr: float,
    decay_epochs,
    epochs: int,
    frozen: Callable | None = None,
    frozen_variables=None,
) -> tuple[classifier.ClassifierState, int]:
    """Trains a classifier on augmented clips of the train videos through the training skeleton,
    checkpointed in WORKDIR/<protocol>_<view>/ (a restarted run resumes there; a finished one is
    restored without building its step or input). Returns (state, steps)."""
    protocol = run.protocol.name
    trainer = Trainer(
        name=f"{protocol}_{view}",
        config=run.config,
        info=run.info,
        mesh=run.mesh,
        workdir=run.workdir / f"{protocol}_{view}",
        epochs=epochs,
        lr=lr,
        decay_epochs=decay_epochs,
        optimizer_fn=optimizer_fn,
    )
    rep = replicated(run.mesh)

    def make_step(state):
        step_fn = jax.jit(
            classifier.make_train_step(apply, trainer.optimizer, trainer.schedule, frozen),
            donate_argnums=0,
            out_shardings=(rep, rep),
        )
        extra = () if frozen is None else (jax.device_put(frozen_variables, rep),)
        return lambda state, batch: step_fn(state, batch[view], batch["label"], *extra)

    def resumed(progress):
        logging.info("resumed %s of %s at batch %d", protocol, view, progress["batches"])
        return progress

    state, _ = trainer.fit(
        jax.device_put(classifier.create_state(variables, trainer.optimizer, run.config.seed), rep),
        CLASSIFIER,
        make_step,
        functools.partial(training_clips.labelled_clip_dataset, view=view),
        run.spec(view),
        resumed=resumed,
        writer=run.writer,
        prefix=f"{protocol}/{view}/train/",
        on_divergence=f"Lower {run.protocol.section}.lr (now {lr}).",
    )
    return state, trainer.total


def _classifier_results(run: EvalRun, per_view: dict, settings: dict, steps: int) -> dict:
    """Writes each view's (and the fused) video-level accuracy; per_view: {view: (videos, labels, probs)}."""
    if run.config.eval.view == TWO_STREAM:
        (va, la, pa), (vb, _, pb) = per_view["rgb"], per_view["flow"]
        if not np.array_equal(va, vb):
            raise ValueError("two-stream fusion needs predictions for the same test videos in both views")
        per_view[TWO_STREAM] = (va, la, (pa + pb) / 2)
    results = {}
    for view, (videos, labels, probs) in per_view.items():
        metrics = accuracy.accuracy(probs, labels)
        results[view] = run.write_result(view, metrics, settings, steps)
        if jax.process_index() == 0:
            np.savez(
                run.workdir / f"{run.protocol.name}_{view}_predictions.npz",
                videos=videos,
                labels=labels,
                probs=probs,
            )
    run.writer.flush()
    logging.info(summary_line(run.protocol, results))
    return results


def _linear_probe(run: EvalRun, config) -> dict:
    """Frozen backbone -> L2 norm -> BN -> linear, SGD (docs/method.md §6); test: softmax averaged
    per video."""
    lc = config.linear
    crops = config.data.eval_crops
    per_view = {}
    steps = 0
    for view in views_of(config.eval.view):
        backbone = run.load(view)
        head = LinearHead(run.info.num_classes)
        if lc.cached:
            variables, steps = _fit_cached_head(run, view, run.clip_features(backbone, "train", "center"))
        else:
            module = backbone.module
            dim = module.out_features
            init = head.init(jax.random.key(config.seed), jnp.zeros((1, dim)), train=False)

            def frozen(bb_vars, clips, module=module):
                return module.apply(bb_vars, clips, train=False).astype(jnp.float32)

            state, steps = _train_on_clips(
                run,
                view,
                head.apply,
                init,
                lambda s: classifier.sgd_l2(s, lc.momentum, lc.weight_decay),
                lc.lr,
                lc.decay_epochs,
                lc.epochs,
                frozen=frozen,
                frozen_variables=backbone.variables,
            )
            variables = {"params": state.params, "batch_stats": state.batch_stats}
        test = run.clip_features(backbone, "test", crops)
        probs = classifier.head_probabilities(
            run.info.num_classes, jax.device_get(variables), test["features"]
        )
        per_view[view] = accuracy.video_predictions(probs, test["video_index"], test["label"])
    settings = {
        "variant": "cached features (dense centre clips, no augmentation)"
        if lc.cached
        else "augmented clips",
        "epochs": int(lc.epochs),
        "lr": float(lc.lr),
        "momentum": float(lc.momentum),
        "weight_decay": float(lc.weight_decay),
        "decay_epochs": list(lc.decay_epochs),
        "batch": int(config.global_batch),
        "test_crops": crops,
        **run.clip_settings(),
    }
    return _classifier_results(run, per_view, settings, steps)


def _finetune(run: EvalRun, config) -> dict:
    """The whole network with dropout before the classifier, Adam, backbone lr x mult (docs/method.md §6)."""
    fc = config.finetune
    crops = config.data.eval_crops
    per_view = {}
    steps = 0
    for view in views_of(config.eval.view):
        backbone = run.load(view)
        # BN over the whole global batch (not the pretraining's groups): same result on any device count.
        module = backbone.module.clone(bn_group_size=None)
        model = FinetuneModel(module, run.info.num_classes, fc.dropout)
        variables = classifier.finetune_variables(model, backbone.variables, jax.random.key(config.seed))
        state, steps = _train_on_clips(
            run,
            view,
            model.apply,
            variables,
            lambda sch: classifier.finetune_optimizer(sch, fc.weight_decay, fc.backbone_lr_mult),
            fc.lr,
            fc.decay_epochs,
            fc.epochs,
        )

        def probs_fn(v, clips, model=model):
            return jax.nn.softmax(model.apply(v, clips, train=False))

        fn = features.sharded_batch_fn(probs_fn, run.mesh)
        rows = run.eval_rows(
            fn, {"params": state.params, "batch_stats": state.batch_stats}, view, "test", crops
        )
        per_view[view] = accuracy.video_predictions(rows["features"], rows["video_index"], rows["label"])
    settings = {
        "epochs": int(fc.epochs),
        "lr": float(fc.lr),
        "backbone_lr_mult": float(fc.backbone_lr_mult),
        "weight_decay": float(fc.weight_decay),
        "dropout": float(fc.dropout),
        "decay_epochs": list(fc.decay_epochs),
        "batch": int(config.global_batch),
        "augmentation": dict(config.data.aug),
        "test_crops": crops,
        **run.clip_settings(),
    }
    return _classifier_results(run, per_view, settings, steps)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """An evaluation protocol as everything that names one reads it: the modes, the config checks,
    the result files and the schedule's table.

    section: its own config section (None: eval and data only); part of a result's key, and the
      prefix of its columns in the schedule's table ('linear_top1').
    runner: (EvalRun, config) -> {view: result record}.
    positive, non_negative, fractions: settings of its section that must be > 0, >= 0, in [0, 1).
    on_clips: (config) -> whether it trains on augmented clips of the train videos (then the
      augmentation and a batch of train videos are checked).
    table_metrics: its metrics in the schedule's table; summary_metrics: in its console line.
    """

    name: str
    section: str | None
    runner: Callable
    table_metrics: tuple[str, ...]
    summary_metrics: tuple[str, ...]
    on_clips: Callable = lambda config: False
    positive: tuple[str, ...] = ()
    non_negative: tuple[str, ...] = ()
    fractions: tuple[str, ...] = ()

    def column(self, metric: str) -> str:
        """The schedule table's name of one of its metrics."""
        return metric if self.section is None else f"{self.section}_{metric}"


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("retrieval", None, _retrieval, ("R@1", "R@5"), tuple(f"R@{k}" for k in retrieval.RECALL_KS)),
        Protocol(
            "linear_probe",
            "linear",
            _linear_probe,
            ("top1",),
            ("top1", "top5"),
            on_clips=lambda config: not config.linear.cached,
            positive=("epochs", "lr"),
            non_negative=("weight_decay",),
            fractions=("momentum",),
        ),
        Protocol(
            "finetune",
            "finetune",
            _finetune,
            ("top1",),
            ("top1", "top5"),
            on_clips=lambda config: True,
            positive=("epochs", "lr"),
            non_negative=("weight_decay", "backbone_lr_mult"),
            fractions=("dropout",),
        ),
    )
}


def run_protocol(name: str, config, workdir) -> dict:
    """Runs the protocol `name` (a key of PROTOCOLS) in `workdir`; {view: result record}."""
    protocol = PROTOCOLS[name]
    with EvalRun.create(config, workdir, protocol) as run:
        return protocol.runner(run, config)
