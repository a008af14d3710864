"""The evaluation protocols of docs/method.md §6 from any encoder: retrieval, linear probe, finetuning.

Each protocol evaluates the view `eval.view` ('rgb', 'flow' or 'two_stream') of the encoders named
by `eval.rgb_source` / `eval.flow_source` (a stage workdir, an export directory or 'random', see
encoders.py) on `data.dir` (UCF101 or HMDB51 prepared by data_prep), split `data.split`.

WORKDIR after a run:
  <protocol>_<dataset>_split<k>_<view>.json   metrics, protocol settings, sources, dataset, date
  events.out.tfevents.*                        the same scalars (<protocol>/<view>/<metric>),
                                               retrieval pictures, classifier training curves
  features/                                    cached clip features (reused while the source,
                                               data and clip settings are unchanged)
  <protocol>_<view>/checkpoints/               classifier runs on clips (resume after a crash)

Two-stream: retrieval averages the two views' normalised video features; the classifiers average
the two views' per-video softmax. Every view is also reported on its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from cvtcl_jax import checkpoints, classifier, encoders, features, optim, retrieval
from cvtcl_jax.classifier import FinetuneModel, LinearHead
from cvtcl_jax.data import device_augment, pipeline
from cvtcl_jax.data.augment import AugmentConfig
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import DatasetInfo, load_dataset_info
from cvtcl_jax.data.random_batches import empty_eval_batch
from cvtcl_jax.models import normalize_frames
from cvtcl_jax.sharding import make_mesh, prefetch_to_mesh, replicated

PROTOCOLS = ("retrieval", "linear_probe", "finetune")
EVAL_VIEWS = ("rgb", "flow", "two_stream")
TWO_STREAM = "two_stream"


def views_of(view: str) -> tuple[str, ...]:
    return ("rgb", "flow") if view == TWO_STREAM else (view,)


def source_descriptions(config) -> dict[str, dict]:
    """{view: encoders.describe(...)} for every view `eval.view` needs (raises ValueError)."""
    ec = config.eval
    out = {}
    for view in views_of(ec.view):
        source = ec[f"{view}_source"]
        if not source:
            raise ValueError(
                f"eval.{view}_source is empty: set it to a stage workdir, an export directory or "
                f"'{encoders.RANDOM}'"
            )
        clip = (config.data.num_frames, config.data.crop_size)
        out[view] = encoders.describe(source, view, config.model, clip, ec.encoder)
    return out


@dataclasses.dataclass
class Context:
    """What every protocol of one run shares."""

    config: object
    workdir: Path
    info: DatasetInfo
    mesh: object
    writer: metric_writers.MetricWriter
    local_batch: int
    sources: dict
    _fns: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, config, workdir) -> Context:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(
            config,
            workdir,
            load_dataset_info(config.data.dir),
            make_mesh(),
            metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0),
            config.global_batch // jax.process_count(),
            source_descriptions(config),
        )

    def spec(self, view: str) -> ClipSpec:
        """The evaluation clip: the size the encoder was trained on, or data.num_frames / crop_size."""
        d = self.config.data
        t, s = (
            self.sources[view]["clip"] if self.config.eval.clip_from_source else (d.num_frames, d.crop_size)
        )
        return ClipSpec(int(t), int(s), 0, d.segment_len)

    def clip(self, view: str) -> tuple[int, int]:
        spec = self.spec(view)
        return spec.num_frames, spec.crop_size

    def clip_settings(self) -> dict:
        """What every protocol records of its test clips: size per view, stride, encoder."""
        return {
            "clip": {v: list(self.clip(v)) for v in views_of(self.config.eval.view)},
            "stride": int(self.config.data.eval_stride),
            "encoder": self.config.eval.encoder,
        }

    def feature_fn(self, backbone: encoders.Backbone) -> Callable:
        """One jitted extractor per model config, shared by every source of that model."""
        key = json.dumps(backbone.model_cfg, sort_keys=True)
        if key not in self._fns:
            self._fns[key] = features.make_feature_fn(backbone.module, self.mesh)
        return self._fns[key]

    def eval_rows(self, fn: Callable, variables, view: str, subset: str, crops: str) -> dict:
        """fn over every dense clip (x crop) of `subset`: {'features', 'video_index', 'label', ...}."""
        d = self.config.data
        spec = self.spec(view)
        ds = pipeline.eval_dataset(
            self.info,
            split=d.split,
            subset=subset,
            views=(view,),
            local_batch=self.local_batch,
            spec=spec,
            stride=d.eval_stride,
            crops=crops,
            ten_crop_scale=d.ten_crop_scale,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            threads=d.threads,
        )
        empty = empty_eval_batch(self.local_batch, spec, (view,))
        return features.extract(fn, variables, ds.as_numpy_iterator(), self.mesh, view, empty)

    def clip_features(self, backbone: encoders.Backbone, subset: str, crops: str) -> dict:
        """Backbone features of every dense clip of `subset`, cached in WORKDIR/features/."""
        d = self.config.data
        key = {
            "source": backbone.source,
            "seed": int(self.config.seed),
            "data": str(Path(self.info.root).absolute()),
            "split": int(d.split),
            "subset": subset,
            "clip": list(self.clip(backbone.view)),
            "stride": int(d.eval_stride),
            "crops": crops,
            "ten_crop_scale": float(d.ten_crop_scale) if crops == "ten" else None,
        }
        path = self.workdir / "features" / f"{backbone.view}_{subset}_{crops}.npz"
        cached = None
        if path.is_file():
            with np.load(path) as f:
                # A file of another key, or written by a version with other row fields, is a miss.
                complete = set(features.ROW_KEYS) <= set(f.files)
                if complete and json.loads(str(f["key"])) == json.loads(json.dumps(key)):
                    cached = {k: f[k] for k in features.ROW_KEYS}
        # Every host must take the same branch (extraction is collective): all hit or all compute.
        if jax.process_count() > 1:
            cached = (
                cached if multihost_utils.process_allgather(np.asarray(cached is not None)).all() else None
            )
        if cached is not None:
            logging.info("using cached %s features %s", backbone.view, path)
            return cached
        rows = self.eval_rows(self.feature_fn(backbone), backbone.variables, backbone.view, subset, crops)
        if jax.process_index() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, key=json.dumps(key), **rows)
        return rows

    def write_result(self, protocol: str, view: str, metrics: dict, settings: dict, step: int = 0) -> dict:
        """WORKDIR/<protocol>_<dataset>_split<k>_<view>.json and the scalars in TensorBoard."""
        record = {
            "protocol": protocol,
            "view": view,
            "metrics": metrics,
            "settings": settings,
            "dataset": self.info.dataset,
            "data_dir": str(Path(self.info.root).absolute()),
            "split": int(self.config.data.split),
            "sources": {v: self.sources[v] for v in views_of(view)},
            "config": run_key(self.config, protocol),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "jax_version": jax.__version__,
        }
        self.writer.write_scalars(step, {f"{protocol}/{view}/{k}": v for k, v in metrics.items()})
        if jax.process_index() == 0:
            path = self.workdir / f"{protocol}_{self.info.dataset}_split{self.config.data.split}_{view}.json"
            path.write_text(json.dumps(record, indent=1))
        return record


def run_key(config, protocol: str) -> dict:
    """The config values a protocol's result depends on (a re-run with equal ones is skipped)."""
    key = {k: config[k].to_dict() for k in ("data", "eval", "model")}
    key.update(seed=int(config.seed), global_batch=int(config.global_batch))
    if protocol in ("linear_probe", "finetune"):
        key[protocol] = config["linear" if protocol == "linear_probe" else "finetune"].to_dict()
    return json.loads(json.dumps(key))


def finished_results(config, workdir, protocol: str) -> dict | None:
    """The results of an earlier run of this very evaluation in `workdir` (same sources, data and
    settings), or None. The schedule uses it so a re-run does not evaluate again."""
    info = load_dataset_info(config.data.dir)
    sources = json.loads(json.dumps(source_descriptions(config)))
    key = run_key(config, protocol)
    out = {}
    for view in _views_and_fused(config.eval.view):
        path = Path(workdir) / f"{protocol}_{info.dataset}_split{config.data.split}_{view}.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("config") != key or record["sources"] != {v: sources[v] for v in views_of(view)}:
            return None
        out[view] = record
    return out


def _load(ctx: Context, view: str) -> encoders.Backbone:
    return encoders.load(ctx.sources[view], ctx.config.seed)


def _views_and_fused(view: str) -> tuple[str, ...]:
    return ("rgb", "flow", TWO_STREAM) if view == TWO_STREAM else (view,)


def summary_line(protocol: str, results: dict) -> str:
    """One line for the end of a run: the main metrics of every view evaluated."""
    main = {"retrieval": ("R@1", "R@5", "R@10", "R@20")}.get(protocol, ("top1", "top5"))
    parts = [f"{view} " + " ".join(f"{k} {r['metrics'][k]:.1f}" for k in main) for view, r in results.items()]
    first = next(iter(results.values()))
    return f"{protocol} {first['dataset']} split {first['split']}: " + "; ".join(parts)


# ---------------------------------------------------------------------- retrieval


def _retrieval_sets(train: dict, test: dict, coclr: bool, seed: int) -> dict:
    """Query (test) and gallery (train) video features of one view."""
    qv, ql, q = retrieval.video_features(test["features"], test["video_index"], test["label"])
    if coclr:
        gv, gl, g = retrieval.single_clip_features(
            train["features"], train["video_index"], train["label"], seed
        )
        q, g = retrieval.centre(q), retrieval.centre(g)
    else:
        gv, gl, g = retrieval.video_features(train["features"], train["video_index"], train["label"])
    return {
        "query_videos": qv,
        "query_labels": ql,
        "query": q,
        "gallery_videos": gv,
        "gallery_labels": gl,
        "gallery": g,
    }


def _fused_sets(a: dict, b: dict) -> dict:
    for key in ("query_videos", "gallery_videos"):
        if not np.array_equal(a[key], b[key]):
            raise ValueError(
                "two-stream retrieval needs both views of the same videos; the view features differ"
            )
    return {
        **a,
        "query": retrieval.fuse(a["query"], b["query"]),
        "gallery": retrieval.fuse(a["gallery"], b["gallery"]),
    }


def _write_pictures(ctx: Context, view: str, sets: dict, k: int = 3) -> None:
    """Figure 4 style: `eval.num_pictures` queries spread over the test set with their top-k."""
    from cvtcl_jax.eval_pictures import neighbour_grid

    n = min(ctx.config.eval.num_pictures, len(sets["query"]))
    if n <= 0 or jax.process_index() > 0:
        return
    rows = np.linspace(0, len(sets["query"]) - 1, n).round().astype(int)
    order = retrieval.ranking(sets["query"][rows], sets["gallery"])[:, :k]
    queries = sets["query_videos"][rows]
    neighbours = sets["gallery_videos"][order]
    same = sets["gallery_labels"][order] == sets["query_labels"][rows][:, None]
    # RGB frames are the readable picture for either view when the data has them.
    shown = "rgb" if "rgb" in ctx.info.views else view
    split = ctx.config.data.split
    q_frames = pipeline.middle_frames(ctx.info, split, "test", shown, queries)
    g_frames = pipeline.middle_frames(ctx.info, split, "train", shown, neighbours.ravel())
    grid = neighbour_grid(queries.tolist(), neighbours.tolist(), same.tolist(), q_frames, g_frames)
    ctx.writer.write_images(0, {f"retrieval/{view}/nearest_neighbours": grid[None]})


def run_retrieval(config, workdir) -> dict:
    """R@1/5/10/20 of test videos querying train videos (docs/method.md §6); {view: result record}."""
    ctx = Context.create(config, workdir)
    coclr = bool(config.eval.coclr_protocol)
    sets = {}
    for view in views_of(config.eval.view):
        backbone = _load(ctx, view)
        train = ctx.clip_features(backbone, "train", "center")
        test = ctx.clip_features(backbone, "test", "center")
        sets[view] = _retrieval_sets(train, test, coclr, config.seed)
    if config.eval.view == TWO_STREAM:
        sets[TWO_STREAM] = _fused_sets(sets["rgb"], sets["flow"])
    settings = {
        "protocol": "coclr" if coclr else "dense",
        "crops": "center",
        **ctx.clip_settings(),
    }
    results = {}
    for view in _views_and_fused(config.eval.view):
        s = sets[view]
        metrics = retrieval.recall_at_k(s["query"], s["query_labels"], s["gallery"], s["gallery_labels"])
        results[view] = ctx.write_result("retrieval", view, metrics, settings)
    _write_pictures(ctx, config.eval.view, sets[config.eval.view])
    ctx.writer.flush()
    logging.info(summary_line("retrieval", results))
    return results


# ---------------------------------------------------------------------- classifiers


def _fit_cached_head(ctx: Context, view: str, train: dict) -> tuple[dict, int]:
    """The linear probe on cached features (see classifier.fit_linear_head); its curves to TB."""
    lc = ctx.config.linear

    def log(epoch, metrics):
        ctx.writer.write_scalars(epoch, {f"linear_probe/{view}/train/{k}": v for k, v in metrics.items()})

    return classifier.fit_linear_head(
        train["features"],
        train["label"],
        ctx.info.num_classes,
        epochs=lc.epochs,
        lr=lc.lr,
        momentum=lc.momentum,
        weight_decay=lc.weight_decay,
        decay_epochs=lc.decay_epochs,
        batch=ctx.config.global_batch,
        seed=ctx.config.seed,
        log=log,
    )


def _train_on_clips(
    ctx: Context,
    protocol: str,
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
    """Trains a classifier on augmented clips of the train videos, checkpointed in
    WORKDIR/<protocol>_<view>/ (a restarted run resumes there). Returns (state, steps)."""
    config = ctx.config
    tc = config.train
    run_dir = ctx.workdir / f"{protocol}_{view}"
    num_videos = ctx.info.subset(config.data.split, "train").num_videos
    steps_per_epoch = num_videos // config.global_batch
    total = epochs * steps_per_epoch
    schedule = optim.step_decay_schedule(lr, steps_per_epoch, decay_epochs)
    optimizer = optimizer_fn(schedule)
    rep = replicated(ctx.mesh)
    state = jax.device_put(classifier.create_state(variables, optimizer, config.seed), rep)
    step_fn = jax.jit(
        classifier.make_train_step(apply, optimizer, schedule, frozen),
        donate_argnums=0,
        out_shardings=(rep, rep),
    )
    mngr = checkpoints.manager(run_dir, keep=tc.keep_checkpoints, item_names=checkpoints.CLASSIFIER_ITEMS)
    start = 0
    if mngr.latest_step() is not None:
        state, progress = checkpoints.restore_classifier(mngr, state)
        start = int(progress["batches"])
        logging.info("resumed %s of %s at batch %d", protocol, view, start)
    if start >= total:
        mngr.close()
        return state, total

    spec = ctx.spec(view)
    ds = pipeline.labelled_clip_dataset(
        ctx.info,
        split=config.data.split,
        subset="train",
        view=view,
        local_batch=ctx.local_batch,
        spec=spec,
        aug=AugmentConfig(**config.data.aug),
        seed=(config.seed * 1_000_003 + zlib.crc32(f"{protocol}_{view}".encode())) % 2**31,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        shuffle_buffer=config.data.shuffle_buffer,
        threads=config.data.threads,
    )
    batches = prefetch_to_mesh(
        ds.as_numpy_iterator(),
        ctx.mesh,
        config.data.prefetch,
        host_keys=("padded",),
        transform=device_augment.make_batch_augmenter(
            ctx.mesh, config.data.aug.blur_kernel_size, spec.crop_size
        ),
    )
    if frozen_variables is not None:
        frozen_variables = jax.device_put(frozen_variables, rep)
    window = []
    for i in range(start, total):
        batch = next(batches)
        extra = () if frozen is None else (frozen_variables,)
        state, metrics = step_fn(state, batch[view], batch["label"], *extra)
        window.append(metrics)
        n = i + 1
        if n % tc.log_every_steps == 0 or n == total:
            host = jax.device_get(window)
            mean = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
            if not np.isfinite(mean["loss"]):
                raise FloatingPointError(
                    f"{protocol} of {view}: the loss became {mean['loss']} at batch {n}; lower its lr "
                    f"(now {lr}) and run the same command to resume from batch {mngr.latest_step()}"
                )
            ctx.writer.write_scalars(n, {f"{protocol}/{view}/train/{k}": v for k, v in mean.items()})
            logging.info(
                "%s %s batch %d/%d: loss %.4f, top1 %.3f",
                protocol,
                view,
                n,
                total,
                mean["loss"],
                mean["top1"],
            )
            window = []
        if n % tc.checkpoint_every_steps == 0 or n == total:
            checkpoints.save_classifier(mngr, n, state, {"epoch": n / steps_per_epoch, "done": n == total})
    mngr.wait_until_finished()
    mngr.close()
    return state, total


def _classifier_results(ctx: Context, protocol: str, per_view: dict, settings: dict, steps: int) -> dict:
    """Writes each view's (and the fused) video-level accuracy; per_view: {view: (videos, labels, probs)}."""
    if ctx.config.eval.view == TWO_STREAM:
        (va, la, pa), (vb, _, pb) = per_view["rgb"], per_view["flow"]
        if not np.array_equal(va, vb):
            raise ValueError("two-stream fusion needs predictions for the same test videos in both views")
        per_view[TWO_STREAM] = (va, la, (pa + pb) / 2)
    results = {}
    for view, (videos, labels, probs) in per_view.items():
        metrics = classifier.accuracy(probs, labels)
        results[view] = ctx.write_result(protocol, view, metrics, settings, steps)
        if jax.process_index() == 0:
            np.savez(
                ctx.workdir / f"{protocol}_{view}_predictions.npz", videos=videos, labels=labels, probs=probs
            )
    ctx.writer.flush()
    logging.info(summary_line(protocol, results))
    return results


def run_linear_probe(config, workdir) -> dict:
    """Frozen backbone -> L2 norm -> BN -> linear, SGD (docs/method.md §6); test: softmax averaged
    per video."""
    ctx = Context.create(config, workdir)
    lc = config.linear
    crops = config.data.eval_crops
    per_view = {}
    steps = 0
    for view in views_of(config.eval.view):
        backbone = _load(ctx, view)
        head = LinearHead(ctx.info.num_classes)
        if lc.cached:
            variables, steps = _fit_cached_head(ctx, view, ctx.clip_features(backbone, "train", "center"))
        else:
            module = backbone.module
            dim = module.out_features
            init = head.init(jax.random.key(config.seed), jnp.zeros((1, dim)), train=False)

            def frozen(bb_vars, clips, module=module):
                return module.apply(bb_vars, normalize_frames(clips), train=False).astype(jnp.float32)

            state, steps = _train_on_clips(
                ctx,
                "linear_probe",
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
        test = ctx.clip_features(backbone, "test", crops)
        probs = classifier.head_probabilities(
            ctx.info.num_classes, jax.device_get(variables), test["features"]
        )
        per_view[view] = classifier.video_predictions(probs, test["video_index"], test["label"])
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
        **ctx.clip_settings(),
    }
    return _classifier_results(ctx, "linear_probe", per_view, settings, steps)


def run_finetune(config, workdir) -> dict:
    """The whole network with dropout before the classifier, Adam, backbone lr x mult (docs/method.md §6)."""
    ctx = Context.create(config, workdir)
    fc = config.finetune
    crops = config.data.eval_crops
    per_view = {}
    steps = 0
    for view in views_of(config.eval.view):
        backbone = _load(ctx, view)
        # BN over the whole global batch (not the pretraining's groups): same result on any device count.
        module = backbone.module.clone(bn_group_size=None)
        model = FinetuneModel(module, ctx.info.num_classes, fc.dropout)
        t, s = ctx.clip(view)
        init = model.init(jax.random.key(config.seed), jnp.zeros((1, t, s, s, 3), jnp.uint8), train=False)
        variables = {
            "params": {**init["params"], "backbone": backbone.variables["params"]},
            "batch_stats": {"backbone": backbone.variables["batch_stats"]},
        }
        state, steps = _train_on_clips(
            ctx,
            "finetune",
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

        fn = features.sharded_batch_fn(probs_fn, ctx.mesh)
        rows = ctx.eval_rows(
            fn, {"params": state.params, "batch_stats": state.batch_stats}, view, "test", crops
        )
        per_view[view] = classifier.video_predictions(rows["features"], rows["video_index"], rows["label"])
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
        **ctx.clip_settings(),
    }
    return _classifier_results(ctx, "finetune", per_view, settings, steps)


RUNNERS = {"retrieval": run_retrieval, "linear_probe": run_linear_probe, "finetune": run_finetune}
