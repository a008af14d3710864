"""What every evaluation protocol of one run shares: the dataset, the mesh, the encoders'
sources, the feature cache and the result files.

WORKDIR of an evaluation:
  <protocol>_<dataset>_<view>.json   metrics, protocol settings, sources, dataset, date (dataset:
                                      data.name as one word, e.g. cvtcl_ucf101_split1)
  events.out.tfevents.*                        the same scalars (<protocol>/<view>/<metric>),
                                               retrieval pictures, classifier training curves
  features/                                    cached clip features (reused while the source,
                                               data and clip settings are unchanged)
  <protocol>_<view>/checkpoints/               classifier runs on clips (resume after a crash)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from cvtcl_jax.data import eval_clips
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import DatasetInfo, host_shards, load_dataset_info
from cvtcl_jax.data.records import naming_damaged_records
from cvtcl_jax.eval import features, sources
from cvtcl_jax.sharding import make_mesh

if TYPE_CHECKING:
    from cvtcl_jax.eval.protocols import Protocol

EVAL_VIEWS = ("rgb", "flow", "two_stream")
TWO_STREAM = "two_stream"


def views_of(view: str) -> tuple[str, ...]:
    return ("rgb", "flow") if view == TWO_STREAM else (view,)


def source_descriptions(config) -> dict[str, dict]:
    """{view: sources.describe(...)} for every view `eval.view` needs (raises ValueError)."""
    ec = config.eval
    out = {}
    for view in views_of(ec.view):
        source = ec[f"{view}_source"]
        if not source:
            raise ValueError(
                f"eval.{view}_source is unset: set it to a stage workdir, an export directory or "
                f"'{sources.RANDOM}'"
            )
        clip = (config.data.num_frames, config.data.crop_size)
        out[view] = sources.describe(source, view, config.model, clip, ec.encoder)
    return out


@dataclasses.dataclass
class EvalRun:
    """One run of one protocol (eval/protocols.py's `Protocol`) in `workdir`: use as
    `with EvalRun.create(config, workdir, protocol) as run:` so its writer is closed on every exit
    path."""

    config: object
    workdir: Path
    protocol: Protocol
    info: DatasetInfo
    mesh: object
    writer: metric_writers.MetricWriter
    sources: dict
    _fns: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, config, workdir, protocol: Protocol) -> EvalRun:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(
            config,
            workdir,
            protocol,
            load_dataset_info(config.data.dir, config.data.name),
            make_mesh(),
            metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0),
            source_descriptions(config),
        )

    def __enter__(self) -> EvalRun:
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()

    def load(self, view: str) -> sources.Backbone:
        """The backbone of the `view` source (random init draws from config.seed)."""
        return sources.load(self.sources[view], self.config.seed)

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

    def feature_fn(self, backbone: sources.Backbone) -> Callable:
        """One jitted extractor per model config, shared by every source of that model."""
        key = json.dumps(backbone.model_cfg, sort_keys=True)
        if key not in self._fns:
            self._fns[key] = features.make_feature_fn(backbone.module, self.mesh)
        return self._fns[key]

    def eval_rows(self, fn: Callable, variables, view: str, subset: str, crops: str) -> dict:
        """fn over every dense clip (x crop) of `subset`: {'features', 'video_index', 'label', ...}."""
        return dataset_rows(
            fn, variables, self.config, self.info, self.mesh, view, subset, self.spec(view), crops
        )

    def clip_features(self, backbone: sources.Backbone, subset: str, crops: str) -> dict:
        """Backbone features of every dense clip of `subset`, cached in WORKDIR/features/."""
        d = self.config.data
        key = {
            "source": backbone.source,
            "seed": int(self.config.seed),
            "data": str(Path(self.info.data_dir).absolute()),
            "dataset": self.info.name,
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

    def write_result(self, view: str, metrics: dict, settings: dict, step: int = 0) -> dict:
        """WORKDIR/<protocol>_<dataset>_<view>.json and the scalars in TensorBoard."""
        protocol = self.protocol.name
        record = {
            "protocol": protocol,
            "view": view,
            "metrics": metrics,
            "settings": settings,
            "dataset": self.info.name,
            "data_dir": str(Path(self.info.data_dir).absolute()),
            "sources": {v: self.sources[v] for v in views_of(view)},
            "config": run_key(self.config, self.protocol),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "jax_version": jax.__version__,
        }
        self.writer.write_scalars(step, {f"{protocol}/{view}/{k}": v for k, v in metrics.items()})
        if jax.process_index() == 0:
            path = self.workdir / f"{protocol}_{self.info.key}_{view}.json"
            path.write_text(json.dumps(record, indent=1))
        return record


def dataset_rows(
    fn: Callable,
    variables,
    config,
    info,
    mesh,
    view: str,
    subset: str,
    spec: ClipSpec,
    crops: str,
    max_videos=None,
) -> dict:
    """fn (per-row outputs) over every dense clip (x crop) of `subset` of `view`, with config.data's
    evaluation settings, gathered from every host: {'features', 'video_index', 'label', ...}.
    max_videos: at most that many videos of each host (None: all)."""
    d = config.data
    local_batch = config.global_batch // jax.process_count()
    ds = eval_clips.eval_dataset(
        info,
        subset=subset,
        views=(view,),
        local_batch=local_batch,
        spec=spec,
        stride=d.eval_stride,
        crops=crops,
        ten_crop_scale=d.ten_crop_scale,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        threads=d.threads,
        max_videos=max_videos,
    )
    empty = features.empty_batch(local_batch, spec, (view,))
    files, _ = host_shards(info.subset(subset), jax.process_index(), jax.process_count())
    batches = naming_damaged_records(ds.as_numpy_iterator(), files)
    return features.extract(fn, variables, batches, mesh, view, empty)


def run_key(config, protocol: Protocol) -> dict:
    """The config values a protocol's result depends on (a re-run with equal ones is skipped):
    data, eval, model, seed, batch and the protocol's own section."""
    key = {k: config[k].to_dict() for k in ("data", "eval", "model")}
    key.update(seed=int(config.seed), global_batch=int(config.global_batch))
    if protocol.section is not None:
        key[protocol.name] = config[protocol.section].to_dict()
    return json.loads(json.dumps(key))


def finished_results(config, workdir, protocol: Protocol) -> dict | None:
    """The results of an earlier run of this very evaluation in `workdir` (same sources, data and
    settings), or None. The schedule uses it so a re-run does not evaluate again."""
    info = load_dataset_info(config.data.dir, config.data.name)
    described = json.loads(json.dumps(source_descriptions(config)))
    key = run_key(config, protocol)
    out = {}
    for view in views_and_fused(config.eval.view):
        path = Path(workdir) / f"{protocol.name}_{info.key}_{view}.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("config") != key or record["sources"] != {v: described[v] for v in views_of(view)}:
            return None
        out[view] = record
    return out


def views_and_fused(view: str) -> tuple[str, ...]:
    return ("rgb", "flow", TWO_STREAM) if view == TWO_STREAM else (view,)


def summary_line(protocol: Protocol, results: dict) -> str:
    """One line for the end of a run: the protocol's summary metrics of every view evaluated."""
    parts = [
        f"{view} " + " ".join(f"{k} {r['metrics'][k]:.1f}" for k in protocol.summary_metrics)
        for view, r in results.items()
    ]
    first = next(iter(results.values()))
    return f"{protocol.name} {first['dataset']}: " + "; ".join(parts)
