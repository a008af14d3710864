"""Reading the raw dataset layouts into a list of videos with labels, sources and splits.

Everything here is checked before any video is decoded: a missing split file, a class that the
class list does not know, or a video named in a split list but absent raises `LayoutError` with
what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg")


class LayoutError(Exception):
    """The raw folder does not have the layout the chosen dataset requires."""


@dataclasses.dataclass(frozen=True)
class Video:
    path: str  # absolute path of the file
    rel: str  # "<class>/<file>" as split lists name it
    video_id: str
    class_name: str
    label: int
    source: str


@dataclasses.dataclass
class Layout:
    """Videos of a dataset (sorted by `rel`), its classes, and split -> subset -> video ids."""

    dataset: str
    classes: list[str]
    videos: list[Video]
    splits: dict[str, dict[str, list[str]]]  # {"split1": {"train": [video_id, ...], "test": [...]}}

    def source_ids(self) -> dict[str, int]:
        """Source name -> unique integer, in sorted order of source names."""
        return {s: i for i, s in enumerate(sorted({v.source for v in self.videos}))}


def _missing(what: str, items: list[str], fix: str) -> LayoutError:
    shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    return LayoutError(f"{what}: {shown}. {fix}")


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _finish(dataset, classes, raw_root: Path, listed: dict[str, dict[str, list[str]]], source_of) -> Layout:
    """Checks every listed video exists and belongs to a known class; builds the Layout."""
    label = {c: i for i, c in enumerate(classes)}
    rels = sorted({rel for subsets in listed.values() for names in subsets.values() for rel in names})
    unknown = sorted({rel.split("/")[0] for rel in rels if rel.split("/")[0] not in label})
    if unknown:
        raise _missing(
            "split lists name classes that the class list does not contain",
            unknown,
            "Check that the split files belong to this dataset version.",
        )
    absent = [rel for rel in rels if not (raw_root / rel).is_file()]
    if absent:
        raise _missing(
            f"videos named in the split lists are missing under {raw_root}",
            absent,
            "Re-download or re-extract the dataset (or pass the right --raw_dir).",
        )
    videos = []
    for rel in rels:
        cls, name = rel.split("/", 1)
        stem = os.path.splitext(os.path.basename(name))[0]
        videos.append(Video(str(raw_root / rel), rel, stem, cls, label[cls], source_of(cls, stem)))
    ids = {v.rel: v.video_id for v in videos}
    if len(set(ids.values())) != len(ids):
        raise LayoutError("two videos share a file name; video ids must be unique")
    splits = {
        split: {subset: sorted(ids[r] for r in names) for subset, names in subsets.items()}
        for split, subsets in listed.items()
    }
    return Layout(dataset, classes, videos, splits)


def ucf101(raw_dir: str, splits: list[int]) -> Layout:
    """UCF101 as distributed: UCF-101/<Class>/v_<Class>_gXX_cYY.avi and ucfTrainTestlist/."""
    raw = Path(raw_dir)
    video_root, lists = raw / "UCF-101", raw / "ucfTrainTestlist"
    for needed in (video_root, lists / "classInd.txt"):
        if not needed.exists():
            raise LayoutError(
                f"{needed} not found; --raw_dir must hold UCF-101/ (the videos) and "
                "ucfTrainTestlist/ (classInd.txt, trainlist0N.txt, testlist0N.txt) as distributed"
            )
    classes = [line.split()[1] for line in _read_lines(lists / "classInd.txt")]
    listed = {}
    for n in splits:
        subsets = {}
        for subset in ("train", "test"):
            path = lists / f"{subset}list{n:02d}.txt"
            if not path.is_file():
                raise LayoutError(f"split file {path} is missing; it ships in ucfTrainTestlist/")
            subsets[subset] = [line.split()[0] for line in _read_lines(path)]
        listed[f"split{n}"] = subsets

    def source_of(cls, stem):
        match = re.match(r"v_.+_g(\d+)_c\d+$", stem)
        if not match:
            raise LayoutError(f"{stem}: UCF101 names look like v_<Class>_gXX_cYY")
        return f"{cls}_g{match.group(1)}"

    return _finish("ucf101", classes, video_root, listed, source_of)


def hmdb51(raw_dir: str, splits: list[int]) -> Layout:
    """HMDB51: <class>/<name>.avi and <class>_test_splitN.txt files (1 train, 2 test, 0 unused).

    The split files may sit anywhere under --raw_dir (e.g. testTrainMulti_7030_splits/).
    """
    raw = Path(raw_dir)
    classes = sorted(p.name for p in raw.iterdir() if p.is_dir() and any(p.glob("*.avi")))
    if not classes:
        raise LayoutError(f"no <class>/*.avi folders under {raw}; extract the HMDB51 class archives there")
    split_files = {p.name: p for p in raw.rglob("*_test_split[0-9].txt")}
    listed = {}
    for n in splits:
        subsets = {"train": [], "test": []}
        missing = [f"{c}_test_split{n}.txt" for c in classes if f"{c}_test_split{n}.txt" not in split_files]
        if missing:
            raise _missing(
                f"HMDB51 split files for split {n} are missing",
                missing,
                "Extract test_train_splits.rar (testTrainMulti_7030_splits/) under --raw_dir.",
            )
        for cls in classes:
            for line in _read_lines(split_files[f"{cls}_test_split{n}.txt"]):
                name, tag = line.split()[:2]
                if tag in ("1", "2"):
                    subsets["train" if tag == "1" else "test"].append(f"{cls}/{name}")
        listed[f"split{n}"] = subsets
    return _finish("hmdb51", classes, raw, listed, lambda cls, stem: f"{cls}/{stem}")


def folder(raw_dir: str, splits: list[int]) -> Layout:
    """Your own data: <class>/<video file> plus splits/trainlist0N.txt and splits/testlist0N.txt.

    Split lines name `<class>/<file>` (anything after a space is ignored, as in UCF101's lists).
    Classes are the sorted folder names; every video is its own source.
    """
    raw = Path(raw_dir)
    classes = sorted(
        p.name
        for p in raw.iterdir()
        if p.is_dir()
        and p.name != "splits"
        and any(f.suffix.lower() in VIDEO_EXTENSIONS for f in p.iterdir())
    )
    if not classes:
        raise LayoutError(f"no <class>/<video> folders under {raw}")
    listed = {}
    for n in splits:
        subsets = {}
        for subset in ("train", "test"):
            path = raw / "splits" / f"{subset}list{n:02d}.txt"
            if not path.is_file():
                raise LayoutError(f"split file {path} is missing; list '<class>/<file>' lines in it")
            subsets[subset] = [line.split()[0] for line in _read_lines(path)]
        listed[f"split{n}"] = subsets
    return _finish("folder", classes, raw, listed, lambda cls, stem: f"{cls}/{stem}")


LAYOUTS = {"ucf101": ucf101, "hmdb51": hmdb51, "folder": folder}
