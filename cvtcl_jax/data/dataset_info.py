"""What a data_prep output directory holds (metadata.json), and which shards this host reads.

No TensorFlow here: configs are checked against the metadata before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

VIEWS = ("rgb", "flow")


class DatasetError(ValueError):
    """The dataset directory or the requested split / subset / view does not fit the request."""


@dataclasses.dataclass(frozen=True)
class SubsetInfo:
    """One subset (train or test) of one split: absolute shard paths, video counts per shard, and
    the largest stored frame (height, width) over its videos (None in metadata written before
    data_prep recorded it)."""

    name: str
    shards: tuple[str, ...]
    shard_sizes: tuple[int, ...] | None
    num_videos: int
    max_frame_size: tuple[int, int] | None = None

    def require_max_frame_size(self) -> tuple[int, int]:
        """max_frame_size, or a DatasetError that says how to get it (data.aug.on_device 'resize'
        pads every shipped frame to it)."""
        if self.max_frame_size is None:
            raise DatasetError(
                f"the metadata of the {self.name} subset does not record its largest frame size, which "
                "data.aug.on_device='resize' needs; run the same `python -m data_prep.build` command "
                "again (finished videos are skipped, only the shards and metadata.json are rewritten) "
                "or set --config.data.aug.on_device=color"
            )
        return self.max_frame_size


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    root: str
    dataset: str
    classes: tuple[str, ...]
    views: tuple[str, ...]
    splits: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, split: int, subset: str) -> SubsetInfo:
        key = f"split{split}"
        if key not in self.splits:
            raise DatasetError(
                f"{self.root} has no split {split} (it has {sorted(self.splits)}); run data_prep.build "
                f"with --splits={split} or choose one of those"
            )
        if subset not in self.splits[key]:
            raise DatasetError(
                f"split {split} of {self.root} has no subset {subset!r}: {sorted(self.splits[key])}"
            )
        entry = self.splits[key][subset]
        shards = tuple(str(Path(self.root) / s) for s in entry["shards"])
        sizes = tuple(entry["shard_sizes"]) if "shard_sizes" in entry else None
        largest = tuple(entry["max_frame_size"]) if "max_frame_size" in entry else None
        return SubsetInfo(subset, shards, sizes, int(entry["num_videos"]), largest)

    def check_views(self, views) -> None:
        for view in views:
            if view not in VIEWS:
                raise DatasetError(f"unknown view {view!r}; views are {VIEWS}")
            if view not in self.views:
                raise DatasetError(
                    f"{self.root} holds the views {list(self.views)}, not {view!r}; prepare the data "
                    "again without --no_flow to train or evaluate on flow"
                )


def load_dataset_info(root: str | Path) -> DatasetInfo:
    """Reads `root/metadata.json` written by `python -m data_prep.build`."""
    path = Path(root) / "metadata.json"
    if not path.is_file():
        raise DatasetError(
            f"no dataset at {root}: {path} does not exist. Prepare one with "
            "`python -m data_prep.build --dataset=ucf101 --raw_dir=... --out_dir=...` and point the "
            "config's data.dir at its --out_dir"
        )
    meta = json.loads(path.read_text())
    return DatasetInfo(
        root=str(Path(root)),
        dataset=meta.get("dataset", "unknown"),
        classes=tuple(meta["classes"]),
        views=tuple(meta.get("views", ["rgb", "flow"])),
        splits=meta["splits"],
    )


def host_shards(subset: SubsetInfo, process_index: int, process_count: int) -> tuple[list[str], int | None]:
    """This host's shards (every process_count-th one) and its number of videos (None if unknown).

    Disjoint over hosts and together all shards. Raises DatasetError when there are fewer shards
    than hosts, since a host without data would stall the others.
    """
    if len(subset.shards) < process_count:
        raise DatasetError(
            f"the {subset.name} subset has {len(subset.shards)} shards for {process_count} hosts; every "
            "host needs at least one. Prepare the data with a smaller --videos_per_shard"
        )
    files = list(subset.shards[process_index::process_count])
    count = None if subset.shard_sizes is None else sum(subset.shard_sizes[process_index::process_count])
    return files, count
