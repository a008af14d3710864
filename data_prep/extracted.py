"""Frames and flow that other tools already extracted, as the input of a build (--rgb_from,
--flow_from): recognising a folder's layout, finding a video in it, and reading its frames.

  coclr       CoCLR's / MemDPC's folders: <Class>/<video>/image_%05d.jpg (the frames) and, in
              another folder, <Class>/<video>/flow_%05d.jpg: 3-channel JPEGs that OpenCV wrote from
              (dx, dy, 128), so the file's B channel is dx and G is dy, each
              round((clip(f, -20, 20) + 20) * 255 / 40), n - 1 of them for n frames.
  coclr_lmdb  CoCLR's LMDBs of those folders (dataset/convert_video_to_lmdb.py): key '%09d' % i
              holds the msgpack list of a video's JPEG bytes in sorted file order; `__order__`
              lists the "Class/video" names (key i is __order__[i]); msgpack's old raw strings
              and its newer str both occur.
  mmaction    mmaction2's rawframes (denseflow): <Class>/<video>/img_%05d.jpg and grayscale
              flow_x_%05d.jpg / flow_y_%05d.jpg, each cvRound(255 (f + b) / 2b) clipped to
              0..255 with a bound b (20 in mmaction2's tools), n - 1 flows for n frames.

Flow is returned in our quantisation (docs/data.md): (H, W, 2) uint8 (dx, dy) with
round((clip(f, -20, 20) + 20) * 255 / 40), so CoCLR's values and mmaction2's at b = 20 pass
through unchanged and other bounds are re-quantised. A video is found by its class folder and
file stem (the video id), or by its stem alone where the class folders are named otherwise or the
videos lie one level deeper (<subset>/<Class>/<video>, as Kinetics' train and val trees).
A `FrameSource` is a small picklable description; LMDB handles and folder indexes are opened
once per process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path

import cv2
import numpy as np

from cvtcl_jax.data.records import FLOW_BOUND
from data_prep.video import VideoError

LAYOUTS = ("coclr", "coclr_lmdb", "mmaction")
# (layout, view) -> the frame files' pattern; flow of mmaction2 is a pair of files per frame.
FILE_PATTERNS = {
    ("coclr", "rgb"): re.compile(r"image_(\d+)\.jpg$"),
    ("coclr", "flow"): re.compile(r"flow_(\d+)\.jpg$"),
    ("mmaction", "rgb"): re.compile(r"img_(\d+)\.jpg$"),
    ("mmaction", "flow"): re.compile(r"flow_x_(\d+)\.jpg$"),
}
EXPECTED = (
    "CoCLR/MemDPC folders (<Class>/<video>/image_00001.jpg, or flow_00001.jpg for flow), CoCLR's LMDB "
    "(a file or folder with its __order__ key, and <name>-order beside it) or mmaction2 rawframes "
    "(<Class>/<video>/img_00001.jpg with flow_x_00001.jpg and flow_y_00001.jpg)"
)


class SourceError(Exception):
    """A --rgb_from / --flow_from path that is not a recognised layout; the message says why."""


@dataclasses.dataclass(frozen=True)
class FrameSource:
    """One view's extracted frames: layout, where, which view, and mmaction2's flow bound."""

    layout: str
    path: str
    view: str  # "rgb" or "flow"
    bound: float = FLOW_BOUND

    def describe(self) -> dict:
        """What the dataset's metadata records of this source."""
        out = {"layout": self.layout, "path": self.path}
        if self.view == "flow":
            out["bound_pixels"] = FLOW_BOUND if self.layout != "mmaction" else self.bound
        return out

    def locate(self, class_name: str, video_id: str) -> str | None:
        """The entry of a video (a folder, or an LMDB key), or None if the source lacks it."""
        if self.layout == "coclr_lmdb":
            names = _lmdb_index(self.path)
            return names.get(f"{class_name}/{video_id}") or _unique(_by_stem(tuple(names), video_id), names)
        folder = Path(self.path) / class_name / video_id
        if folder.is_dir():
            return str(folder)
        candidates = _folder_index(self.path).get(video_id, ())
        return candidates[0] if len(candidates) == 1 else None

    def input_bytes(self, entry: str) -> int:
        """Bytes of the video's files in this source (the cache notices a changed video by them)."""
        if self.layout == "coclr_lmdb":
            with _lmdb_env(self.path).begin(buffers=True) as txn:
                value = txn.get(entry.encode())
                return 0 if value is None else len(value)
        return sum(os.path.getsize(p) for p in self._files(entry, all_flow=True))

    def _files(self, entry: str, all_flow: bool = False) -> list[str]:
        pattern = FILE_PATTERNS[(self.layout, self.view)]
        try:
            names = os.listdir(entry)
        except OSError as e:
            raise VideoError(f"its {self.view} folder {entry} cannot be listed: {e}") from e
        found = sorted((int(m.group(1)), n) for n in names if (m := pattern.match(n)))
        numbers = [i for i, _ in found]
        if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            gap = next(i for i, j in zip(numbers, numbers[1:], strict=False) if j != i + 1) + 1
            raise VideoError(
                f"its {self.view} files in {entry} skip number {gap} (an incomplete extraction?)"
            )
        files = [os.path.join(entry, n) for _, n in found]
        if all_flow and self.layout == "mmaction" and self.view == "flow":
            files += [f.replace("flow_x_", "flow_y_") for f in files]
        return [f for f in files if os.path.exists(f)]

    def read_encoded(self, entry: str) -> list[bytes]:
        """The video's files, in frame order: JPEG bytes (mmaction2 flow: x and y interleaved)."""
        if self.layout == "coclr_lmdb":
            return _lmdb_frames(self.path, entry)
        files = self._files(entry)
        if self.layout == "mmaction" and self.view == "flow":
            missing = [f for f in files if not os.path.exists(f.replace("flow_x_", "flow_y_"))]
            if missing:
                raise VideoError(f"flow_y is missing beside {missing[0]} ({len(missing)} flows lack it)")
            files = [f for x in files for f in (x, x.replace("flow_x_", "flow_y_"))]
        out = []
        for path in files:
            with open(path, "rb") as f:
                out.append(f.read())
        return out

    def rgb_frames(self, entry: str) -> list[np.ndarray]:
        """The video's frames as BGR uint8 (H, W, 3), decoded as written."""
        return [_decode(jpeg, cv2.IMREAD_COLOR, i) for i, jpeg in enumerate(self.read_encoded(entry))]

    def flows(self, entry: str) -> list[np.ndarray]:
        """The video's flows as (H, W, 2) uint8 (dx, dy) in our quantisation."""
        files = self.read_encoded(entry)
        if self.layout == "mmaction":
            pairs = [
                (
                    _decode(files[i], cv2.IMREAD_GRAYSCALE, i // 2),
                    _decode(files[i + 1], cv2.IMREAD_GRAYSCALE, i // 2),
                )
                for i in range(0, len(files), 2)
            ]
            return [requantize(np.stack(p, axis=-1), self.bound) for p in pairs]
        # OpenCV wrote (dx, dy, 128) as BGR and decodes it as BGR: channel 0 is dx, 1 is dy.
        return [_decode(jpeg, cv2.IMREAD_COLOR, i)[..., :2] for i, jpeg in enumerate(files)]


def _decode(jpeg: bytes, flags: int, index: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flags)
    if image is None:
        raise VideoError(f"frame {index + 1} is not a readable JPEG")
    return image


def requantize(u8: np.ndarray, bound: float) -> np.ndarray:
    """Flow quantised with another bound (255 (f + b) / 2b) -> ours (bound FLOW_BOUND); the
    identity at b = FLOW_BOUND."""
    if bound == FLOW_BOUND:
        return u8
    flow = u8.astype(np.float64) * (2 * bound / 255.0) - bound
    clipped = np.clip(flow, -FLOW_BOUND, FLOW_BOUND)
    return np.round((clipped + FLOW_BOUND) * 255.0 / (2 * FLOW_BOUND)).astype(np.uint8)


def _unique(entries: list[str], names: dict[str, str]) -> str | None:
    return names[entries[0]] if len(entries) == 1 else None


def _by_stem(names: tuple[str, ...], video_id: str) -> list[str]:
    return [n for n in names if n.rsplit("/", 1)[-1] == video_id]


@functools.cache
def _video_dirs(root: str, limit: int | None = None) -> list[str]:
    """Folders that hold files, at <Class>/<video> or one level deeper (<subset>/<Class>/<video>,
    as Kinetics' train and val trees), sorted; the first `limit` only when given."""
    found: list[str] = []
    for depth in (2, 3):
        level = [root]
        for _ in range(depth):
            level = sorted(e.path for d in level for e in os.scandir(d) if e.is_dir())
        for folder in level:
            if any(e.is_file() for e in os.scandir(folder)):
                found.append(folder)
                if limit is not None and len(found) >= limit:
                    return found
        if found:
            return found
    return found


@functools.cache
def _folder_index(root: str) -> dict[str, tuple[str, ...]]:
    """video stem -> its folders below root (built once per process): for class folders named
    otherwise than the class list's, and for videos one level deeper."""
    index: dict[str, list[str]] = {}
    for folder in _video_dirs(root):
        index.setdefault(os.path.basename(folder), []).append(folder)
    return {k: tuple(v) for k, v in index.items()}


@functools.cache
def _lmdb_env(path: str):
    """The LMDB at path (a folder holding data.mdb, or the data file), read-only, once per process."""
    import lmdb

    subdir = os.path.isdir(path)
    return lmdb.open(path, subdir=subdir, readonly=True, lock=False, readahead=False, meminit=False)


def _unpack(raw, what: str):
    import msgpack

    try:
        return msgpack.unpackb(raw, raw=True)
    except (ValueError, msgpack.exceptions.UnpackException) as e:
        raise VideoError(f"its LMDB value is damaged ({what}: {type(e).__name__}: {e})") from e


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@functools.cache
def _lmdb_index(path: str) -> dict[str, str]:
    """ "Class/video" -> its key ('%09d' % i), from the LMDB's __order__ list."""
    with _lmdb_env(path).begin() as txn:
        order = txn.get(b"__order__")
        if order is None:
            raise SourceError(f"{path} is an LMDB without CoCLR's __order__ key; expected {EXPECTED}")
        names = _unpack(order, "__order__")
    return {_text(name): f"{i:09d}" for i, name in enumerate(names)}


def _lmdb_frames(path: str, key: str) -> list[bytes]:
    with _lmdb_env(path).begin() as txn:
        value = txn.get(key.encode())
    if value is None:
        raise VideoError(f"LMDB key {key} is missing")
    frames = _unpack(value, f"key {key}")
    if not isinstance(frames, list) or not all(isinstance(f, bytes) for f in frames):
        raise VideoError(f"LMDB key {key} does not hold a list of JPEG bytes")
    return frames


def _is_lmdb(path: Path) -> bool:
    """An LMDB folder (data.mdb), or the single-file LMDB CoCLR writes (with <db>-lock or -order)."""
    if path.is_dir():
        return (path / "data.mdb").is_file()
    return path.is_file() and (Path(f"{path}-lock").exists() or Path(f"{path}-order").exists())


def _sample_files(root: Path, limit: int = 16) -> list[str]:
    """File names in the first few video folders below root."""
    return [name for folder in _video_dirs(str(root), limit) for name in sorted(os.listdir(folder))]


def detect(path: str, view: str, layout: str | None = None, bound: float = FLOW_BOUND) -> FrameSource:
    """The FrameSource at `path` for `view`, its layout recognised from what it holds (or `layout`
    checked). Raises SourceError saying what was found and what was expected."""
    root = Path(path)
    if not root.exists():
        raise SourceError(f"{path} does not exist")
    if layout is not None and layout not in LAYOUTS:
        raise SourceError(f"layout {layout!r} is not one of {LAYOUTS}")
    if layout == "coclr_lmdb" or (layout is None and _is_lmdb(root)):
        source = FrameSource("coclr_lmdb", str(root.absolute()), view, bound)
        try:
            _lmdb_index(source.path)
        except Exception as e:  # lmdb.Error, a damaged __order__
            raise SourceError(f"{path} cannot be read as CoCLR's LMDB: {e}") from e
        return source
    if not root.is_dir():
        raise SourceError(f"{path} is a file but not an LMDB; expected {EXPECTED}")
    sample = _sample_files(root)
    found = {(lay, v) for (lay, v), pattern in FILE_PATTERNS.items() if any(pattern.match(n) for n in sample)}
    # mmaction2 keeps frames and flow in one folder; CoCLR's flow folder holds only flow files.
    candidates = [lay for lay, v in found if v == view and (layout is None or lay == layout)]
    if len(candidates) == 1:
        return FrameSource(candidates[0], str(root.absolute()), view, bound)
    shown = ", ".join(sorted(set(sample))[:4]) or "no <Class>/<video>/ folders with files"
    other = [f"{lay} {v}" for lay, v in found if v != view]
    raise SourceError(
        f"{path} is not a recognised {view} layout: it holds {shown}"
        + (f" (that is {', '.join(other)}, not {view})" if other else "")
        + f"; expected {EXPECTED}"
    )
