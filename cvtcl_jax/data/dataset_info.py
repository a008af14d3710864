"""What a prepared TFDS dataset holds (from TFDS's dataset info), and which shards this host reads.

A dataset is named as TFDS names it, `<builder>/<config>` (e.g. `cvtcl_ucf101/split1`), inside a
TFDS data_dir; the builders are in data_prep/builders.py, but reading needs only the files (TFDS
restores the features and splits from them), so this host does not need data_prep's code.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

from cvtcl_jax.data.records import VIEWS

__all__ = [
    "VIEWS",
    "DatasetError",
    "DatasetInfo",
    "SubsetInfo",
    "host_shards",
    "count_records",
    "load_dataset_info",
    "prepared_datasets",
    "verify_shards",
]


class DatasetError(ValueError):
    """The dataset or the requested subset / view does not fit the request."""


@dataclasses.dataclass(frozen=True)
class SubsetInfo:
    """One TFDS split ('train', 'test', ...): absolute shard paths, video counts per shard, and the
    largest stored frame (height, width) over its videos (None if the metadata lacks it)."""

    name: str
    shards: tuple[str, ...]
    shard_sizes: tuple[int, ...]
    num_videos: int
    max_frame_size: tuple[int, int] | None = None

    def require_max_frame_size(self) -> tuple[int, int]:
        """max_frame_size, or a DatasetError that says how to do without it (data.aug.on_device
        'resize' pads every shipped frame to it)."""
        if self.max_frame_size is None:
            raise DatasetError(
                f"the metadata of the {self.name} split does not record its largest frame size, which "
                "data.aug.on_device='resize' needs; prepare the dataset with `python -m data_prep.build` "
                "or set --config.data.aug.on_device=color"
            )
        return self.max_frame_size


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    data_dir: str
    name: str  # TFDS name with its config, e.g. cvtcl_ucf101/split1
    classes: tuple[str, ...]
    views: tuple[str, ...]
    subsets: dict
    features: object  # tfds.features.FeaturesDict, for the pipeline's parser
    short_side: int | None = None  # the stored frames' short side (data_prep's --short_side)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def key(self) -> str:
        """The name as one word for file names: cvtcl_ucf101_split1."""
        return self.name.replace("/", "_")

    def subset(self, subset: str) -> SubsetInfo:
        if subset not in self.subsets:
            raise DatasetError(f"{self.name} has no {subset!r} split; it has {sorted(self.subsets)}")
        return self.subsets[subset]

    def check_views(self, views) -> None:
        for view in views:
            if view not in VIEWS:
                raise DatasetError(f"unknown view {view!r}; views are {VIEWS}")
            if view not in self.views:
                raise DatasetError(
                    f"{self.name} holds the views {list(self.views)}, not {view!r}; prepare the data "
                    "again without --no_flow to train or evaluate on flow"
                )

    def check_crop(self, crop_size: int, key: str = "data.crop_size") -> None:
        """A crop no larger than the stored frames' short side (else every clip is upsampled)."""
        if self.short_side is not None and crop_size > self.short_side:
            raise DatasetError(
                f"{key}={crop_size} is larger than the short side of the frames stored in {self.name} "
                f"({self.short_side} px): every clip would be upsampled. Lower {key} to at most "
                f"{self.short_side}, or prepare the data with --short_side={crop_size} or more"
            )


def prepared_datasets(data_dir) -> list[str]:
    """The `<builder>/<config>` names prepared under data_dir."""
    return sorted({"/".join(p.parts[-4:-2]) for p in Path(data_dir).glob("*/*/*/dataset_info.json")})


def load_dataset_info(data_dir: str | Path | None, name: str | None) -> DatasetInfo:
    """The TFDS dataset `name` (builder/config) in `data_dir`, read from its files alone."""
    import tensorflow_datasets as tfds

    if not data_dir or not name:
        raise DatasetError(
            "a dataset needs data.dir (the TFDS data_dir) and data.name (e.g. cvtcl_ucf101/split1)"
        )
    root = Path(data_dir)
    if name.count("/") != 1:
        raise DatasetError(f"dataset name {name!r} must be <builder>/<config>, e.g. cvtcl_ucf101/split1")
    if not list(root.glob(f"{name}/*/dataset_info.json")):
        have = prepared_datasets(root) if root.is_dir() else []
        raise DatasetError(
            f"no dataset {name} in {root} (it holds {have or 'none'}). Prepare one with "
            "`python -m data_prep.build --dataset=ucf101 --raw_dir=... --out_dir=DATA` (or `tfds build`) and "
            "set data.dir to that data_dir and data.name to the <builder>/<config> it printed"
        )
    builder = tfds.builder(name, data_dir=str(root))
    info = builder.info
    meta = dict(info.metadata or {})
    largest = meta.get("max_frame_size", {})
    subsets = {}
    for split, split_info in info.splits.items():
        sizes = tuple(int(n) for n in split_info.shard_lengths)
        subsets[split] = SubsetInfo(
            name=split,
            shards=tuple(str(Path(builder.data_dir) / f) for f in split_info.filenames),
            shard_sizes=sizes,
            num_videos=int(split_info.num_examples),
            max_frame_size=tuple(largest[split]) if split in largest else None,
        )
    return DatasetInfo(
        data_dir=str(root),
        name=name,
        classes=tuple(info.features["label"].names),
        views=tuple(v for v in VIEWS if v in info.features),
        subsets=subsets,
        features=info.features,
        short_side=meta.get("parameters", {}).get("short_side"),
    )


def count_records(path: str) -> tuple[int, bool]:
    """(complete records, whether the file ends where its last record does) of a TFRecord file,
    from the records' length headers alone (no record is read or checked)."""
    if "://" in path:  # a remote file system: TensorFlow's reader
        import tensorflow as tf

        opener, size = (lambda: tf.io.gfile.GFile(path, "rb")), tf.io.gfile.stat(path).length
    else:
        opener, size = (lambda: open(path, "rb")), os.path.getsize(path)
    count, pos = 0, 0
    with opener() as f:
        while pos < size:
            f.seek(pos)
            header = f.read(12)  # uint64 length, uint32 masked CRC of the length
            if len(header) < 12:
                return count, False
            pos += 12 + struct.unpack("<Q", header[:8])[0] + 4  # the data and its CRC
            if pos > size:
                return count, False
            count += 1
    return count, True


def verify_shards(info: DatasetInfo, subsets) -> None:
    """Every record file of `subsets` holds as many records as the dataset's metadata says, and
    ends where its last record does; DatasetError naming the first that does not."""
    for name in subsets:
        subset = info.subset(name)
        for path, expected in zip(subset.shards, subset.shard_sizes, strict=True):
            if not Path(path).exists() and "://" not in path:
                raise DatasetError(f"{path}, a record file of {info.name}, is missing. {_REBUILD}")
            count, complete = count_records(path)
            if count != expected or not complete:
                cut = "" if complete else f", and it ends inside record {count + 1}"
                raise DatasetError(
                    f"{path} holds {count} complete records where the metadata of {info.name} says "
                    f"{expected}{cut}: the file is damaged. {_REBUILD}"
                )


_REBUILD = (
    "Rebuild the dataset with the `python -m data_prep.build` command that made it and --overwrite "
    "(its per-video cache makes that quick)"
)


def host_shards(subset: SubsetInfo, process_index: int, process_count: int) -> tuple[list[str], int]:
    """This host's shards (every process_count-th one) and its number of videos.

    Disjoint over hosts and together all shards. Raises DatasetError when there are fewer shards
    than hosts, since a host without data would stall the others.
    """
    if len(subset.shards) < process_count:
        raise DatasetError(
            f"the {subset.name} split has {len(subset.shards)} shards for {process_count} hosts; every "
            "host needs at least one. Prepare the data with --num_shards of at least the host count"
        )
    files = list(subset.shards[process_index::process_count])
    return files, sum(subset.shard_sizes[process_index::process_count])
