"""The stored format of a prepared video dataset: the TFDS features of one video, and their parser.

A prepared dataset is a TensorFlow Datasets (TFDS) dataset (data_prep/builders.py builds it), one
example per video:

  video_id     Text        file stem, e.g. v_ApplyEyeMakeup_g08_c01
  label        ClassLabel  class index with the class names (classInd order for UCF101, sorted
                           names otherwise)
  source       Text        the source video the clip was cut from (UCF101: <Class>_gXX)
  source_id    int64       unique integer per source (clips of one UCF101 group share it)
  video_index  int64       position of the video in the dataset's sorted video list
  num_frames   int64       RGB frames stored (n)
  num_flow     int64       flow frames stored (n - 1; flow i is between frames i and i + 1)
  fps          float32     frame rate of the source file
  height/width int64       stored frame size (short side resized, aspect kept)
  rgb          Video       one JPEG per RGB frame
  flow         Video       one 3-channel JPEG per flow frame: (dx, dy, 128) as uint8 around 128
                           (absent in an RGB-only dataset)

The input pipeline reads the frames as JPEG bytes (TFDS's frame decoding skipped) and decodes only
the frames a clip uses.
"""

from __future__ import annotations

VIEWS = ("rgb", "flow")

# Flow quantisation (docs/method.md §5): clip to +-FLOW_BOUND native pixels, map to 0..255.
FLOW_BOUND = 20.0

INT_KEYS = ("source_id", "video_index", "num_frames", "num_flow", "height", "width")
TEXT_KEYS = ("video_id", "source")


def video_features(classes: list[str] | None, views=VIEWS):
    """The TFDS FeaturesDict of one video; `classes` may be None and set later (builders read the
    class list from the raw data)."""
    import numpy as np
    import tensorflow_datasets as tfds

    features = {key: tfds.features.Text() for key in TEXT_KEYS}
    features.update({key: tfds.features.Scalar(np.int64) for key in INT_KEYS})
    features["fps"] = tfds.features.Scalar(np.float32)
    features["label"] = tfds.features.ClassLabel(names=classes) if classes else tfds.features.ClassLabel()
    for view in views:
        features[view] = tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg")
    return tfds.features.FeaturesDict(features)


def parser(features, keys):
    """A graph function: serialized example -> {key: tensor} for `keys` only, frames as (n,) JPEG
    bytes and integers as int32, so records can be parsed inside tf.data without decoding a frame.

    The parse spec is the TFDS features' own serialized layout, read by one
    `tf.io.parse_single_example`: TFDS's `deserialize_example` (with its frame decoding skipped)
    parses the same fields five to six times slower (docs/performance.md).
    """
    import tensorflow as tf

    serialized = features.get_serialized_info()
    spec = {}
    for key in keys:
        info = serialized[key]
        if info.shape == ():
            spec[key] = tf.io.FixedLenFeature([], info.tf_dtype)
        else:  # a video's frames: (n,) encoded JPEGs
            spec[key] = tf.io.FixedLenSequenceFeature([], info.tf_dtype, allow_missing=True)

    def parse(raw):
        example = tf.io.parse_single_example(raw, spec)
        return {k: tf.cast(v, tf.int32) if v.dtype == tf.int64 else v for k, v in example.items()}

    return parse


def write_dataset(data_dir, name: str, features, splits: dict, videos_per_shard: int, metadata=None):
    """Writes examples as the TFDS dataset `name` (builder/config) in `data_dir`, in the given order
    and shards, with TFDS's own metadata writer (for tests and benchmarks, which make their videos
    in memory; data_prep's builders write real datasets). splits: {split: [example dict, ...]};
    metadata: the dataset's `info.metadata` (e.g. max_frame_size). Returns the dataset directory."""
    from pathlib import Path

    import tensorflow as tf
    import tensorflow_datasets as tfds

    directory = Path(data_dir) / name / "1.0.0"
    directory.mkdir(parents=True, exist_ok=True)
    builder = name.split("/")[0]
    for split, examples in splits.items():
        chunks = [examples[i : i + videos_per_shard] for i in range(0, len(examples), videos_per_shard)]
        for s, chunk in enumerate(chunks):
            with tf.io.TFRecordWriter(
                str(directory / f"{builder}-{split}.tfrecord-{s:05d}-of-{len(chunks):05d}")
            ) as w:
                for example in chunk:
                    w.write(features.serialize_example(example))
    extra = {"metadata": tfds.core.MetadataDict(metadata)} if metadata else {}
    tfds.folder_dataset.write_metadata(data_dir=directory, features=features, check_data=False, **extra)
    return directory


def read_examples(paths, features) -> list[dict]:
    """All examples of the given record files as Python values, frames as JPEG bytes (for tools
    and tests); file order."""
    import tensorflow as tf

    keys = [k for k in features.keys()]
    parse = parser(features, keys)
    out = []
    for example in tf.data.TFRecordDataset(list(paths)).map(parse).as_numpy_iterator():
        item = dict(example)
        for key in TEXT_KEYS:
            item[key] = item[key].decode()
        for view in VIEWS:
            if view in item:
                item[view] = list(item[view])
        out.append(item)
    return out


class DamagedRecordError(RuntimeError):
    """A record of the dataset cannot be read; the message names its file and the video before it."""


def find_damaged_record(paths) -> str | None:
    """Where the first unreadable record of these record files is, as a sentence (file, index,
    the last video read before it), or None if every record reads."""
    import tensorflow as tf

    for path in paths:
        last, count = None, 0
        try:
            for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                count += 1
                ids = tf.train.Example.FromString(raw).features.feature["video_id"].bytes_list.value
                last = ids[0].decode() if ids else last
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            after = f"after video {last}" if last else "at its start"
            return f"{path}: record {count + 1} ({after}) cannot be read ({e.message.splitlines()[0]})"
    return None


def naming_damaged_records(batches, paths):
    """`batches` as they come; a record that cannot be read raises DamagedRecordError naming its
    file and the video before it (found by reading `paths` again)."""
    import tensorflow as tf

    try:
        yield from batches
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        where = find_damaged_record(paths) or f"one of {len(paths)} record files ({e.message})"
        raise DamagedRecordError(
            f"{where}. The file is damaged: rebuild the dataset with the `python -m data_prep.build` command "
            "that made it and --overwrite (its per-video cache makes that quick)"
        ) from e
