"""The per-video cache of a build: each prepared (or failed) video, kept so a re-run skips it.

A build that is interrupted (a killed process, a preempted worker, a restarted runner) loses no
finished video: every video's frames are written to `<cache>/<video_id>.pkl` and its outcome to
`<cache>/<video_id>.json` (written last, so a half-written video is not taken as done). The cache
sits under the TFDS download_dir, on any filesystem tf.io.gfile reaches (local disk, GCS, HDFS),
so the workers of a cluster runner share it. Its directory name carries the preparation
parameters and inputs, so a build with other parameters never reuses a video prepared
differently, and a video whose input changed (its file, or its extracted frames and flow) is
prepared again.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable

from data_prep.layouts import Video
from data_prep.video import PreparedVideo


def cache_key(short_side: int, jpeg_quality: int, flow_backend: str | None, frames_from: str | None = None):
    """The cache directory's name for these parameters, e.g. 128px_q90_opencv (or _rgb, no flow);
    frames read from another tool's layout add it: 128px_q90_coclr_given."""
    inputs = f"_{frames_from}" if frames_from else ""
    return f"{short_side}px_q{jpeg_quality}{inputs}_{flow_backend or 'rgb'}"


class VideoCache:
    """Finished videos of one dataset prepared with one set of parameters.

    input_bytes: video -> bytes of its input (None where absent), by which a changed input is
    noticed (Preparation.input_bytes).
    """

    def __init__(self, directory: str, input_bytes: Callable[[Video], int | None]):
        self.directory = str(directory)
        self.input_bytes = input_bytes

    def _path(self, video: Video, suffix: str) -> str:
        return os.path.join(self.directory, video.video_id + suffix)

    def _write(self, path: str, data: bytes) -> None:
        import tensorflow as tf

        tmp = path + ".tmp"
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)

    def outcome(self, video: Video) -> dict | None:
        """The recorded outcome ({'ok': True, 'num_frames', ...} or {'ok': False, 'reason'}), or
        None if the video was not prepared yet or its raw file changed since."""
        import tensorflow as tf

        path = self._path(video, ".json")
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path, "rb") as f:
            record = json.loads(f.read())
        if record.get("raw_bytes") != self.input_bytes(video):
            return None
        return record

    def load(self, video: Video) -> PreparedVideo | None:
        """The prepared video, or None if it is not in the cache (or its last attempt failed)."""
        import tensorflow as tf

        record = self.outcome(video)
        if not record or not record["ok"]:
            return None
        with tf.io.gfile.GFile(self._path(video, ".pkl"), "rb") as f:
            return pickle.loads(f.read())

    def save(self, video: Video, prepared: PreparedVideo) -> dict:
        """Stores a prepared video; returns its outcome record."""
        import tensorflow as tf

        tf.io.gfile.makedirs(self.directory)
        self._write(self._path(video, ".pkl"), pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))
        record = {
            "ok": True,
            "rel": video.rel,
            "raw_bytes": self.input_bytes(video),
            "fps": prepared.fps,
            "height": prepared.size[0],
            "width": prepared.size[1],
            "num_frames": len(prepared.rgb),
            "num_flow": len(prepared.flows),
        }
        self._write(self._path(video, ".json"), json.dumps(record).encode())
        return record

    def save_failure(self, video: Video, reason: str) -> None:
        """Records why a video could not be prepared (a re-run tries it again)."""
        import tensorflow as tf

        tf.io.gfile.makedirs(self.directory)
        record = {"ok": False, "rel": video.rel, "raw_bytes": self.input_bytes(video), "reason": reason}
        self._write(self._path(video, ".json"), json.dumps(record).encode())
