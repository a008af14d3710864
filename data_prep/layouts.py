"""Reading a raw dataset layout (UCF101, HMDB51, Kinetics, a folder) into the videos of one split
list, with their labels, sources and subsets: `LAYOUTS[dataset](raw_dir, split) -> Layout`.

Everything here is checked before any video is decoded: a missing split file or annotation CSV, a
class that the class list does not know, or a video named in a split list but absent raises
`LayoutError` with what is wrong and how to fix it (Kinetics' absent videos, which every copy has,
are set aside in `Layout.missing` instead). With `videos_required=False` (frames and flow given
by another tool, data_prep/extracted.py) the raw directory supplies only the split lists and
classes: its videos need not be there.
"""

from __future__ import annotations

import csv
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
    """One split of a dataset: its videos (sorted by `rel`), classes, and subset -> video ids."""

    dataset: str
    classes: list[str]
    videos: list[Video]
    subsets: dict[str, list[str]]  # {"train": [video_id, ...], "test": [...]} (TFDS split names)
    missing: list[str] = dataclasses.field(default_factory=list)  # listed, absent (Kinetics only)

    def set_aside(self, absent_ids: set[str]) -> Layout:
        """This layout without the videos whose ids are in `absent_ids`, listed in `missing`."""
        kept = [v for v in self.videos if v.video_id not in absent_ids]
        subsets = {k: [i for i in ids if i not in absent_ids] for k, ids in self.subsets.items()}
        gone = [v.rel for v in self.videos if v.video_id in absent_ids]
        return Layout(self.dataset, self.classes, kept, subsets, sorted(self.missing + gone))

    def source_ids(self) -> dict[str, int]:
        """Source name -> unique integer, in sorted order of source names."""
        return {s: i for i, s in enumerate(sorted({v.source for v in self.videos}))}


def _missing(what: str, items: list[str], fix: str) -> LayoutError:
    shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    return LayoutError(f"{what}: {shown}. {fix}")


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _entry(line: str) -> tuple[str, str | None]:
    """A stripped split-list line -> (the video's path, its trailing number or None). The path is
    the whole line but a final whitespace-separated integer (UCF101's class index, HMDB51's
    train/test tag), so file names with spaces are kept whole."""
    match = re.fullmatch(r"(.*\S)\s+(\d+)", line)
    return (match.group(1), match.group(2)) if match else (line, None)


def _finish(
    dataset, classes, raw_root: Path, listed: dict[str, list[str]], source_of, required=True
) -> Layout:
    """Checks every listed video belongs to a known class (and exists, if `required`); builds
    the Layout."""
    label = {c: i for i, c in enumerate(classes)}
    rels = sorted({rel for names in listed.values() for rel in names})
    unknown = sorted({rel.split("/")[0] for rel in rels if rel.split("/")[0] not in label})
    if unknown:
        raise _missing(
            "split lists name classes that the class list does not contain",
            unknown,
            "Check that the split files belong to this dataset version.",
        )
    absent = [rel for rel in rels if required and not (raw_root / rel).is_file()]
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
    return _layout(dataset, classes, videos, listed, [])


def _layout(dataset, classes, videos: list[Video], listed: dict[str, list[str]], missing) -> Layout:
    ids = {v.rel: v.video_id for v in videos}
    if len(set(ids.values())) != len(ids):
        raise LayoutError("two videos share a file name; video ids must be unique")
    subsets = {subset: sorted(ids[r] for r in names) for subset, names in listed.items()}
    return Layout(dataset, classes, videos, subsets, sorted(missing))


def ucf101(raw_dir: str, split: int, videos_required: bool = True) -> Layout:
    """UCF101 as distributed: UCF-101/<Class>/v_<Class>_gXX_cYY.avi and ucfTrainTestlist/."""
    raw = Path(raw_dir)
    video_root, lists = raw / "UCF-101", raw / "ucfTrainTestlist"
    for needed in [video_root] * videos_required + [lists / "classInd.txt"]:
        if not needed.exists():
            raise LayoutError(
                f"{needed} not found; the raw directory must hold UCF-101/ (the videos) and "
                "ucfTrainTestlist/ (classInd.txt, trainlist0N.txt, testlist0N.txt) as distributed"
            )
    classes = [line.split(maxsplit=1)[1] for line in _read_lines(lists / "classInd.txt")]
    listed = {}
    for subset in ("train", "test"):
        path = lists / f"{subset}list{split:02d}.txt"
        if not path.is_file():
            raise LayoutError(f"split file {path} is missing; it ships in ucfTrainTestlist/")
        listed[subset] = [_entry(line)[0] for line in _read_lines(path)]

    def source_of(cls, stem):
        match = re.match(r"v_.+_g(\d+)_c\d+$", stem)
        if not match:
            raise LayoutError(f"{stem}: UCF101 names look like v_<Class>_gXX_cYY")
        return f"{cls}_g{match.group(1)}"

    return _finish("ucf101", classes, video_root, listed, source_of, videos_required)


def hmdb51(raw_dir: str, split: int, videos_required: bool = True) -> Layout:
    """HMDB51: <class>/<name>.avi and <class>_test_splitN.txt files (1 train, 2 test, 0 unused).

    The split files may sit anywhere under the raw directory (e.g. testTrainMulti_7030_splits/).
    Without the videos, the classes are those the split files name.
    """
    raw = Path(raw_dir)
    split_files = {p.name: p for p in raw.rglob("*_test_split[0-9].txt")}
    if videos_required:
        classes = sorted(p.name for p in raw.iterdir() if p.is_dir() and any(p.glob("*.avi")))
        where = f"no <class>/*.avi folders under {raw}; extract the HMDB51 class archives there"
    else:
        classes = sorted({name.rsplit("_test_split", 1)[0] for name in split_files})
        where = f"no <class>_test_splitN.txt files under {raw}; extract test_train_splits.rar there"
    if not classes:
        raise LayoutError(where)
    missing = [
        f"{c}_test_split{split}.txt" for c in classes if f"{c}_test_split{split}.txt" not in split_files
    ]
    if missing:
        raise _missing(
            f"HMDB51 split files for split {split} are missing",
            missing,
            "Extract test_train_splits.rar (testTrainMulti_7030_splits/) under the raw directory.",
        )
    listed = {"train": [], "test": []}
    for cls in classes:
        for line in _read_lines(split_files[f"{cls}_test_split{split}.txt"]):
            name, tag = _entry(line)
            if tag in ("1", "2"):
                listed["train" if tag == "1" else "test"].append(f"{cls}/{name}")
    return _finish("hmdb51", classes, raw, listed, lambda cls, stem: f"{cls}/{stem}", videos_required)


def folder(raw_dir: str, split: int, videos_required: bool = True) -> Layout:
    """Your own data: <class>/<video file> plus splits/trainlist0N.txt and splits/testlist0N.txt.

    Split lines name `<class>/<file>` (file names may hold spaces; a trailing number, as in
    UCF101's lists, is ignored).
    Classes are the sorted folder names (without the videos: the classes the split lists name);
    every video is its own source.
    """
    raw = Path(raw_dir)
    listed = {}
    for subset in ("train", "test"):
        path = raw / "splits" / f"{subset}list{split:02d}.txt"
        if not path.is_file():
            raise LayoutError(f"split file {path} is missing; list '<class>/<file>' lines in it")
        listed[subset] = [_entry(line)[0] for line in _read_lines(path)]
    if videos_required:
        classes = sorted(
            p.name
            for p in raw.iterdir()
            if p.is_dir()
            and p.name != "splits"
            and any(f.suffix.lower() in VIDEO_EXTENSIONS for f in p.iterdir())
        )
    else:
        classes = sorted({rel.split("/")[0] for names in listed.values() for rel in names})
    if not classes:
        raise LayoutError(f"no <class>/<video> folders under {raw}")
    return _finish("folder", classes, raw, listed, lambda cls, stem: f"{cls}/{stem}", videos_required)


KINETICS_SUBSETS = {"train": "train", "val": "validation"}  # folder and CSV name -> TFDS split


def kinetics(raw_dir: str, split: int | None = None, videos_required: bool = True) -> Layout:
    """Kinetics-400/600/700 as the public downloader lays it out: <subset>/<youtube_id>_<start:06d>_
    <end:06d>.mp4 for subset train and val, labelled by annotations/<subset>.csv (columns label,
    youtube_id, time_start, time_end, ...). The test folder has no public labels and is not read.

    Classes are the sorted labels of both CSVs; the source is the YouTube video (clips cut from
    one video are siblings). A CSV row whose video is absent (every copy of Kinetics lacks some)
    is set aside in `Layout.missing`, not an error.
    """
    del split  # Kinetics has one split
    raw = Path(raw_dir)
    rows = {}
    for folder_name in KINETICS_SUBSETS:
        path = raw / "annotations" / f"{folder_name}.csv"
        if not path.is_file():
            raise LayoutError(
                f"{path} not found; the raw directory must hold annotations/train.csv and "
                "annotations/val.csv, and the videos under train/ and val/, as the Kinetics downloader "
                "lays them out"
            )
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            need = {"label", "youtube_id", "time_start", "time_end"}
            if not need <= set(reader.fieldnames or ()):
                raise LayoutError(f"{path} lacks the columns {sorted(need - set(reader.fieldnames or ()))}")
            rows[folder_name] = list(reader)
    classes = sorted({row["label"] for subset_rows in rows.values() for row in subset_rows})
    label = {c: i for i, c in enumerate(classes)}
    videos, listed, missing = [], {}, []
    for folder_name, subset in KINETICS_SUBSETS.items():
        listed[subset] = []
        for row in rows[folder_name]:
            stem = (
                f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            )
            rel = f"{folder_name}/{stem}.mp4"
            if videos_required and not (raw / rel).is_file():
                missing.append(rel)
                continue
            videos.append(
                Video(str(raw / rel), rel, stem, row["label"], label[row["label"]], row["youtube_id"])
            )
            listed[subset].append(rel)
    videos.sort(key=lambda v: v.rel)
    return _layout("kinetics", classes, videos, listed, missing)


LAYOUTS = {"ucf101": ucf101, "hmdb51": hmdb51, "folder": folder, "kinetics": kinetics}
