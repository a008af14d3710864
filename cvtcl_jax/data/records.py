"""The on-disk format: one `tf.train.SequenceExample` per video (DMVR-style), and its parser.

Context features (one per video):
  video_id     bytes   file stem, e.g. v_ApplyEyeMakeup_g08_c01
  class_name   bytes   e.g. ApplyEyeMakeup
  label        int64   0-based class index (classInd order for UCF101, sorted names otherwise)
  source       bytes   the source video the clip was cut from (UCF101: <Class>_gXX)
  source_id    int64   unique integer per source (clips of one UCF101 group share it)
  video_index  int64   position of the video in the dataset's sorted video list
  num_frames   int64   RGB frames stored (n)
  num_flow     int64   flow frames stored (n - 1; flow i is between frames i and i + 1)
  fps          float   frame rate of the source file
  height/width int64   stored frame size (short side resized, aspect kept)
Feature lists:
  image/encoded  one JPEG per RGB frame
  flow/encoded   one 3-channel JPEG per flow frame: (dx, dy, 128) as uint8 around 128
"""

from __future__ import annotations

import dataclasses

FORMAT_VERSION = 1
RGB_KEY = "image/encoded"
FLOW_KEY = "flow/encoded"

# Flow quantisation (docs/method.md §5): clip to +-FLOW_BOUND native pixels, map to 0..255.
FLOW_BOUND = 20.0


@dataclasses.dataclass
class VideoRecord:
    """Everything stored for one video (decoded JPEG bytes kept encoded)."""

    video_id: str
    class_name: str
    label: int
    source: str
    source_id: int
    video_index: int
    fps: float
    height: int
    width: int
    frames: list[bytes]
    flows: list[bytes]

    def to_proto_bytes(self) -> bytes:
        import tensorflow as tf

        def ints(v):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

        def byts(v):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))

        context = tf.train.Features(
            feature={
                "video_id": byts(self.video_id),
                "class_name": byts(self.class_name),
                "label": ints(self.label),
                "source": byts(self.source),
                "source_id": ints(self.source_id),
                "video_index": ints(self.video_index),
                "num_frames": ints(len(self.frames)),
                "num_flow": ints(len(self.flows)),
                "fps": tf.train.Feature(float_list=tf.train.FloatList(value=[self.fps])),
                "height": ints(self.height),
                "width": ints(self.width),
            }
        )

        def frame_list(items):
            return tf.train.FeatureList(
                feature=[tf.train.Feature(bytes_list=tf.train.BytesList(value=[b])) for b in items]
            )

        lists = tf.train.FeatureLists(
            feature_list={RGB_KEY: frame_list(self.frames), FLOW_KEY: frame_list(self.flows)}
        )
        # deterministic=True sorts the feature maps, so the same video gives the same bytes in any process.
        example = tf.train.SequenceExample(context=context, feature_lists=lists)
        return example.SerializeToString(deterministic=True)


def frame_size(raw: bytes) -> tuple[int, int]:
    """(height, width) stored in one serialised record."""
    import tensorflow as tf

    feature = tf.train.SequenceExample.FromString(raw).context.feature
    return int(feature["height"].int64_list.value[0]), int(feature["width"].int64_list.value[0])


CONTEXT_INT_KEYS = ("label", "source_id", "video_index", "num_frames", "num_flow", "height", "width")
CONTEXT_BYTES_KEYS = ("video_id", "class_name", "source")


def parse_features():
    """(context_features, sequence_features) for `tf.io.parse_single_sequence_example`."""
    import tensorflow as tf

    context = {k: tf.io.FixedLenFeature([], tf.int64) for k in CONTEXT_INT_KEYS}
    context.update({k: tf.io.FixedLenFeature([], tf.string) for k in CONTEXT_BYTES_KEYS})
    context["fps"] = tf.io.FixedLenFeature([], tf.float32)
    sequence = {
        RGB_KEY: tf.io.FixedLenSequenceFeature([], tf.string),
        FLOW_KEY: tf.io.FixedLenSequenceFeature([], tf.string),
    }
    return context, sequence


def read_records(paths) -> list[dict]:
    """All records of the given TFRecord files, parsed to Python values (for tools and tests)."""
    import tensorflow as tf

    context_spec, sequence_spec = parse_features()
    out = []
    for raw in tf.data.TFRecordDataset(list(paths)):
        context, sequence = tf.io.parse_single_sequence_example(raw, context_spec, sequence_spec)
        item = {k: v.numpy() for k, v in context.items()}
        for k in CONTEXT_BYTES_KEYS:
            item[k] = item[k].decode()
        item["frames"] = list(sequence[RGB_KEY].numpy())
        item["flows"] = list(sequence[FLOW_KEY].numpy())
        out.append(item)
    return out
