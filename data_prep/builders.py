"""TFDS dataset builders: raw UCF101, HMDB51, Kinetics or a folder of your own videos -> a TFDS
dataset of RGB JPEG frames and TV-L1 flow JPEGs (features: cvtcl_jax/data/records.py).

    tfds build cvtcl_ucf101 --imports=data_prep.builders --config=split1 \\
        --manual_dir=RAW --data_dir=DATA [--beam_pipeline_options=...]

or `python -m data_prep.build` (the same builders with today's flags). Each builder reads its raw
layout from TFDS's manual_dir (no network access), checks it before any video is decoded
(data_prep/layouts.py), and generates its examples as an Apache Beam pipeline, one element per
video: decode, resize, flow, encode. The pipeline runs in this process by default, on Beam's
DirectRunner with local workers, or unchanged on Dataflow, Flink or Spark (docs/data.md).

Every video's outcome goes through the per-video cache (data_prep/video_cache.py) under the
download_dir, so a re-run after an interruption computes only the videos not yet done, and a
video that cannot be used (unreadable, empty, one frame) is skipped, counted (Beam metric
cvtcl/videos_failed) and listed with its reason in the dataset's metadata (`info.metadata`).

Builder configs: UCF101, HMDB51 and the folder layout have one config per official split list
(split1, split2, split3, at the default parameters; other parameters are configs named after them,
see `config_for`, e.g. `tfds build --config='{"name": "split1_112px_q90", "split": 1,
"short_side": 112}'`); Kinetics has k400, k600 and k700, which only name the version in the
manual dir.
"""

from __future__ import annotations

import dataclasses
import os

import apache_beam as beam
import tensorflow_datasets as tfds
from absl import logging

from cvtcl_jax.data.records import FLOW_BOUND, VIEWS, video_features
from data_prep.extracted import FrameSource
from data_prep.layouts import LAYOUTS, Layout, LayoutError, Video
from data_prep.video import GIVEN_FLOW, Preparation, compute_video, failure_reason
from data_prep.video_cache import VideoCache, cache_key

DEFAULT_FLOW_BATCH = 16  # pairs per JAX flow batch on an accelerator (not yet tuned on one)
CACHE_FOLDER = "cvtcl_video_cache"


@dataclasses.dataclass
class VideoConfig(tfds.core.BuilderConfig):
    """What is stored: the split list (None: the dataset has one), frame size, JPEG quality, and
    flow or not. The registered configs have the defaults; `config_for` names the others."""

    split: int | None = 1
    short_side: int = 128
    jpeg_quality: int = 90
    flow: bool = True

    def check(self) -> None:
        """Raises ValueError naming a field out of range (before any work)."""
        if self.split is not None and self.split not in (1, 2, 3):
            raise ValueError(f"split must be 1, 2 or 3; got {self.split}")
        if self.short_side < 1:
            raise ValueError("short_side must be at least 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")


def split_configs() -> list[VideoConfig]:
    return [VideoConfig(name=f"split{n}", split=n, description=f"official split list {n}") for n in (1, 2, 3)]


def config_for(base: str, split: int | None, short_side=128, jpeg_quality=90, flow=True) -> str | VideoConfig:
    """The registered config `base` (e.g. split1, k400) when the parameters are the defaults, else
    a config named after them (split1_112px_q90, split1_128px_q90_rgb): TFDS keeps each config in
    its own directory, so datasets stored differently never mix."""
    if (short_side, jpeg_quality, flow) == (128, 90, True):
        return base
    name = f"{base}_{short_side}px_q{jpeg_quality}" + ("" if flow else "_rgb")
    config = VideoConfig(name=name, split=split, short_side=short_side, jpeg_quality=jpeg_quality, flow=flow)
    config.check()
    return config


def resolve_flow_backend(requested: str) -> str:
    """'auto' -> 'jax' where JAX's default backend is a GPU or TPU, else 'opencv'."""
    if requested != "auto":
        return requested
    import jax

    return "jax" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "opencv"


def default_flow_batch() -> int:
    """JAX flow pairs per batch: 1 on a CPU, where a batch runs until its slowest pair stops."""
    import jax

    return 1 if jax.default_backend() == "cpu" else DEFAULT_FLOW_BATCH


def flow_description(prep: Preparation) -> dict:
    """What the metadata records of the flow: method, backend, parameters."""
    import cv2

    from cvtcl_jax.flow.params import OPENCV_DEFAULTS

    backend = prep.flow_backend
    if backend == GIVEN_FLOW:
        return {
            "method": "given: extracted by another tool and read as stored, never recomputed",
            "backend": backend,
            "source": prep.flow_from.describe(),
            "bound_pixels": FLOW_BOUND,
            "quantisation": "round((v + 20) * 255 / 40), channels (dx, dy, 128) (re-quantised from the "
            "source's bound where it differs)",
        }
    if backend == "jax":
        import jax

        # The batch shape is the compiled program, which fixes the flow's float rounding.
        version = (
            f"cvtcl_jax TV-L1 on jax {jax.__version__}, {jax.default_backend()}, "
            f"batches of {prep.flow_batch}, buffers in multiples of {prep.flow_bucket}"
        )
    else:
        version = f"OpenCV {cv2.__version__} DualTVL1OpticalFlow (CPU)"
    return {
        "method": "Dual TV-L1 (OpenCV's CPU algorithm), grayscale, native size",
        "backend": backend,
        "backend_version": version,
        "parameters": dataclasses.asdict(OPENCV_DEFAULTS),
        "bound_pixels": FLOW_BOUND,
        "quantisation": "round((v + 20) * 255 / 40), channels (dx, dy, 128)",
    }


def prepare_examples(job: tuple[Video, int, int, int], prep: Preparation):
    """Beam FlatMap: (video, video_index, source_id, key) -> its (key, example), from the cache or
    computed and cached; nothing for a video that cannot be used (its reason is cached)."""
    video, index, source_id, key = job
    cache = VideoCache(prep.cache_dir, prep.input_bytes)
    prepared = cache.load(video)
    if prepared is not None:
        beam.metrics.Metrics.counter("cvtcl", "videos_cached").inc()
    else:
        try:
            prepared = compute_video(video, prep)
        except Exception as e:
            cache.save_failure(video, failure_reason(e))
            beam.metrics.Metrics.counter("cvtcl", "videos_failed").inc()
            return
        cache.save(video, prepared)
        beam.metrics.Metrics.counter("cvtcl", "videos_prepared").inc()
    example = {
        "video_id": video.video_id,
        "label": video.label,
        "source": video.source,
        "source_id": source_id,
        "video_index": index,
        "num_frames": len(prepared.rgb),
        "num_flow": len(prepared.flows),
        "fps": prepared.fps,
        "height": prepared.size[0],
        "width": prepared.size[1],
        "rgb": prepared.rgb,
    }
    if prep.flow_backend is not None:
        example["flow"] = prepared.flows
    yield key, example


class VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The shared builder; subclasses name the raw layout (`LAYOUT`) and describe the dataset.

    Who computes the flow is not part of the dataset (both backends store the same flow, to JPEG
    rounding; docs/method.md §5), so it is a constructor argument, not a config field: `tfds build`
    uses 'auto', `python -m data_prep.build` passes --flow_backend, --flow_batch, --flow_bucket.
    So are frames and flow that other tools extracted (rgb_from, flow_from: FrameSources of
    data_prep/extracted.py, from --rgb_from / --flow_from): then the raw directory supplies only
    the split lists and classes, and the stored dataset has the same features.
    """

    LAYOUT = ""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "RGB JPEG frames and TV-L1 flow JPEGs per video (cvtcl-jax data format 1)."}
    BUILDER_CONFIGS = split_configs()
    HOMEPAGE = ""
    CITATION = ""
    DESCRIPTION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION
            + f"\n\nStored by cvtcl-jax: every frame as JPEG (quality {config.jpeg_quality}) with short side "
            f"{config.short_side}"
            + (", and TV-L1 optical flow between consecutive frames." if config.flow else "."),
            features=video_features(None, VIEWS if config.flow else ("rgb",)),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(),
            # Records in the order of their keys, the video ids' (TFDS would order them by a hash):
            # the input pipeline shuffles files and records itself, every epoch, with its seeds.
            disable_shuffling=True,
        )

    def __init__(
        self,
        *,
        flow_backend: str = "auto",
        flow_batch: int | None = None,
        flow_bucket: int = 32,
        rgb_from: FrameSource | None = None,
        flow_from: FrameSource | None = None,
        **kwargs,
    ):
        if flow_backend not in ("auto", "opencv", "jax"):
            raise ValueError(f"flow_backend must be auto, opencv or jax; got {flow_backend!r}")
        if (flow_batch is not None and flow_batch < 1) or flow_bucket < 1:
            raise ValueError("flow_batch and flow_bucket must be at least 1")
        if flow_from is not None and rgb_from is None:
            raise ValueError("flow_from needs rgb_from: give the frames the flow was computed from too")
        self.flow_backend, self.flow_batch, self.flow_bucket = flow_backend, flow_batch, flow_bucket
        self.rgb_from, self.flow_from = rgb_from, flow_from
        super().__init__(**kwargs)

    def read_layout(self, manual_dir) -> Layout:
        """The raw layout in manual_dir, checked (LayoutError before any video is decoded); with
        rgb_from, the given frames (and flow) must hold at least one of its videos. Kinetics sets
        the videos they lack aside as missing, as it does absent raw videos."""
        layout = LAYOUTS[self.LAYOUT](str(manual_dir), self.builder_config.split, self.rgb_from is None)
        for source in (self.rgb_from, self.flow_from if self.builder_config.flow else None):
            if source is None:
                continue
            absent = {v.video_id for v in layout.videos if source.locate(v.class_name, v.video_id) is None}
            if len(absent) == len(layout.videos):
                names = ", ".join(f"{v.class_name}/{v.video_id}" for v in layout.videos[:3])
                raise LayoutError(
                    f"the {source.view} at {source.path} ({source.layout}) holds none of the "
                    f"{len(layout.videos)} videos the split lists name (e.g. {names}); is it this dataset's?"
                )
            if self.LAYOUT == "kinetics":
                layout = layout.set_aside(absent)
        return layout

    def preparation(self, download_dir) -> Preparation:
        """The parameters a worker needs; resolves the flow backend on this (the launching) host."""
        config = self.builder_config
        config.check()
        if not config.flow:
            backend = None
        elif self.flow_from is not None:
            backend = GIVEN_FLOW
        else:
            backend = resolve_flow_backend(self.flow_backend)
        frames_from = self.rgb_from.layout if self.rgb_from is not None else None
        key = cache_key(config.short_side, config.jpeg_quality, backend, frames_from)
        return Preparation(
            cache_dir=os.path.join(str(download_dir), CACHE_FOLDER, self.name, key),
            short_side=config.short_side,
            jpeg_quality=config.jpeg_quality,
            flow_backend=backend,
            flow_batch=(self.flow_batch or default_flow_batch()) if backend == "jax" else 1,
            flow_bucket=self.flow_bucket,
            rgb_from=self.rgb_from,
            flow_from=self.flow_from if config.flow else None,
        )

    def _split_generators(self, dl_manager):
        layout = self.read_layout(dl_manager.manual_dir)
        self.info.features["label"].names = layout.classes
        self._layout, self._prep = layout, self.preparation(dl_manager.download_dir)
        sources = layout.source_ids()
        index = {v.video_id: i for i, v in enumerate(layout.videos)}
        by_id = {v.video_id: v for v in layout.videos}
        # Integer keys (TFDS's ordered writer needs them) in the order of the video ids.
        key = {vid: k for k, vid in enumerate(sorted(by_id))}
        return {
            subset: self._generate_examples(
                [(by_id[i], index[i], sources[by_id[i].source], key[i]) for i in ids]
            )
            for subset, ids in layout.subsets.items()
        }

    def _generate_examples(self, jobs):
        return beam.Create(jobs) | beam.FlatMap(prepare_examples, prep=self._prep)

    def _download_and_prepare(self, dl_manager, download_config):
        super()._download_and_prepare(dl_manager, offline_runner(download_config))
        if download_config.max_examples_per_split == 0:  # TFDS's dry run: nothing was generated
            return
        # The pipeline has finished: every video's outcome is in the cache.
        cache = VideoCache(self._prep.cache_dir, self._prep.input_bytes)
        summary = build_summary(self._layout, cache, self._prep, self.builder_config.split)
        self.info.metadata.update(summary)
        for failure in summary["failures"]:
            logging.warning("%s: %s skipped: %s", self.name, failure["path"], failure["reason"])
        if summary["missing"]:
            logging.warning(
                "%s: %d listed videos are missing: %s", self.name, len(summary["missing"]), summary["missing"]
            )


def offline_runner(download_config):
    """The download config with Beam's FnApiRunner where it would run Beam's DirectRunner.

    Since Beam 2.6x the DirectRunner first tries its Prism runner, a binary it fetches from GitHub
    at run time; the FnApiRunner it otherwise falls back to is the same local engine (in this
    process, or in worker processes with direct_num_workers and direct_running_mode) and needs no
    network, as a build from a manual_dir must not. Cluster runners are left as they are.
    """
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    options = download_config.beam_options
    runner = options.view_as(StandardOptions).runner if options is not None else None
    if download_config.beam_runner is None and runner in (None, "DirectRunner"):
        return dataclasses.replace(download_config, beam_runner=FnApiRunner())
    return download_config


def build_parameters(prep: Preparation) -> dict:
    """What the metadata records of how a dataset was built: size, quality, frames, flow."""
    return {
        "short_side": prep.short_side,
        "jpeg_quality": prep.jpeg_quality,
        "frames": "decoded from the raw videos" if prep.rgb_from is None else prep.rgb_from.describe(),
        "flow": None if prep.flow_backend is None else flow_description(prep),
    }


def build_summary(layout: Layout, cache: VideoCache, prep: Preparation, split: int | None) -> dict:
    """The dataset's metadata: parameters, per-split largest frame, failures and missing videos."""
    outcomes = {v.video_id: cache.outcome(v) for v in layout.videos}
    by_id = {v.video_id: v for v in layout.videos}
    largest, counts = {}, {}
    for subset, ids in layout.subsets.items():
        done = [outcomes[i] for i in ids if outcomes[i] and outcomes[i]["ok"]]
        counts[subset] = len(done)
        # The static shape of on-device resizing (data.aug.on_device='resize').
        largest[subset] = [max((o[k] for o in done), default=0) for k in ("height", "width")]
    failures = [
        {"video_id": vid, "path": by_id[vid].rel, "reason": (o or {}).get("reason", "not prepared")}
        for vid, o in sorted(outcomes.items())
        if not (o and o["ok"])
    ]
    return {
        "dataset": layout.dataset,
        "split": split,
        "num_classes": len(layout.classes),
        "num_listed": len(layout.videos) + len(layout.missing),
        "num_prepared": sum(1 for o in outcomes.values() if o and o["ok"]),
        "num_per_split": counts,
        "max_frame_size": largest,
        "parameters": build_parameters(prep),
        "failures": failures,
        "missing": layout.missing,
    }


UCF101_CITATION = """@article{soomro2012ucf101,
  title={UCF101: A dataset of 101 human actions classes from videos in the wild},
  author={Soomro, Khurram and Zamir, Amir Roshan and Shah, Mubarak},
  journal={arXiv preprint arXiv:1212.0402},
  year={2012}
}"""
HMDB51_CITATION = """@inproceedings{kuehne2011hmdb,
  title={HMDB: a large video database for human motion recognition},
  author={Kuehne, Hildegard and Jhuang, Hueihan and Garrote, Estibaliz and Poggio, Tomaso and
          Serre, Thomas},
  booktitle={ICCV},
  year={2011}
}"""
KINETICS_CITATION = """@article{kay2017kinetics,
  title={The Kinetics human action video dataset},
  author={Kay, Will and Carreira, Joao and Simonyan, Karen and others},
  journal={arXiv preprint arXiv:1705.06950},
  year={2017}
}"""


class CvtclUcf101(VideoBuilder):
    """UCF101 for cvtcl-jax."""

    LAYOUT = "ucf101"
    HOMEPAGE = "https://www.crcv.ucf.edu/data/UCF101.php"
    CITATION = UCF101_CITATION
    DESCRIPTION = "UCF101: 13,320 videos of 101 human actions; three official train/test split lists."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Extract UCF101.rar (the folder UCF-101/) and UCF101TrainTestSplits-RecognitionTask.zip "
        "(the folder ucfTrainTestlist/) into manual_dir."
    )


class CvtclHmdb51(VideoBuilder):
    """HMDB51 for cvtcl-jax."""

    LAYOUT = "hmdb51"
    HOMEPAGE = "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/"
    CITATION = HMDB51_CITATION
    DESCRIPTION = "HMDB51: 6,766 videos of 51 human actions; three official train/test split lists."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Extract hmdb51_org.rar and each class archive in it (one folder <class>/ of .avi files per "
        "class) and test_train_splits.rar (the <class>_test_splitN.txt files) into manual_dir."
    )


class CvtclFolder(VideoBuilder):
    """Your own videos for cvtcl-jax."""

    LAYOUT = "folder"
    DESCRIPTION = "A folder of videos: one sub-folder per class, split lists in splits/."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put one folder per class of video files (<class>/<file>) in manual_dir, and list "
        "'<class>/<file>' lines in splits/trainlist0N.txt and splits/testlist0N.txt."
    )


class CvtclKinetics(VideoBuilder):
    """Kinetics-400/600/700 for cvtcl-jax (train and validation; the test set has no public labels)."""

    LAYOUT = "kinetics"
    HOMEPAGE = "https://github.com/cvdfoundation/kinetics-dataset"
    CITATION = KINETICS_CITATION
    DESCRIPTION = "Kinetics: 10-second YouTube clips of 400, 600 or 700 human actions."
    BUILDER_CONFIGS = [
        VideoConfig(name=f"k{n}", split=None, description=f"Kinetics-{n} as downloaded into manual_dir")
        for n in (400, 600, 700)
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download with the public downloader (github.com/cvdfoundation/kinetics-dataset): manual_dir "
        "holds train/ and val/ (<youtube_id>_<start:06d>_<end:06d>.mp4) and annotations/train.csv and "
        "annotations/val.csv. Videos missing from the copy are listed in the metadata, not fatal."
    )


BUILDERS = {b.LAYOUT: b for b in (CvtclUcf101, CvtclHmdb51, CvtclFolder, CvtclKinetics)}


def dataset_configs(dataset: str, splits=(1,), kinetics_version: str = "400", **params) -> list:
    """The configs (names or VideoConfigs, see `config_for`) of a dataset for these parameters."""
    if dataset == "kinetics":
        return [config_for(f"k{kinetics_version}", None, **params)]
    return [config_for(f"split{n}", n, **params) for n in splits]


def dataset_name(dataset: str, split: int = 1, **params) -> str:
    """The TFDS name `<builder>/<config>` (the configs' data.name) of a dataset built with these
    parameters, e.g. dataset_name('ucf101', 1, short_side=64) == 'cvtcl_ucf101/split1_64px_q90'."""
    (config,) = dataset_configs(dataset, (split,), **params)
    return f"{BUILDERS[dataset].name}/{config if isinstance(config, str) else config.name}"
