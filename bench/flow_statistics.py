"""A hand-made baseline for the fidelity benchmark: eight numbers of a video's stored flow.

Per flow frame, after removing the frame's median flow (the camera's motion): the mean dx, the
mean dy, the mean divergence and the mean curl; per video, the mean and the standard deviation over
time of each (8 numbers). They are standardised with the train videos' statistics and evaluated
as the networks' features are (cvtcl_jax/eval): nearest-neighbour retrieval of test videos among
train videos by cosine similarity, and the linear probe (L2 norm, BN, linear, SGD) of the config.
"""

from __future__ import annotations

import cv2
import numpy as np

from cvtcl_jax.data import records
from cvtcl_jax.eval import accuracy, classifier, retrieval
from data_prep.video import dequantize_flow

STATISTICS = ("dx", "dy", "divergence", "curl")


def frame_statistics(flow: np.ndarray) -> np.ndarray:
    """(T, H, W, 2) flow in pixels -> (T, 4): mean dx, dy, divergence and curl of each frame after
    its median (dx, dy) is removed."""
    flow = flow - np.median(flow, axis=(1, 2), keepdims=True)
    dx, dy = flow[..., 0], flow[..., 1]
    ddx_dy, ddx_dx = np.gradient(dx, axis=(1, 2))
    ddy_dy, ddy_dx = np.gradient(dy, axis=(1, 2))
    per_pixel = np.stack([dx, dy, ddx_dx + ddy_dy, ddy_dx - ddx_dy], axis=-1)
    return per_pixel.mean(axis=(1, 2))


def video_feature(flow: np.ndarray) -> np.ndarray:
    """(T, H, W, 2) flow -> (8,): the mean over time of the frame statistics, then their std."""
    stats = frame_statistics(flow)
    return np.concatenate([stats.mean(axis=0), stats.std(axis=0)])


def decode_flow(jpegs) -> np.ndarray:
    """Stored flow JPEGs (dx, dy, 128 as RGB) -> (T, H, W, 2) flow in pixels."""
    bgr = np.stack([cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs])
    return dequantize_flow(bgr[..., [2, 1]])


def subset_features(info, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels (V,), features (V, 8)) of a prepared dataset's split, in its record order."""
    examples = records.read_examples(info.subset(subset).shards, info.features)
    labels = np.array([e["label"] for e in examples], np.int64)
    return labels, np.stack([video_feature(decode_flow(e["flow"])) for e in examples])


def evaluate(train: tuple, test: tuple, num_classes: int, linear, batch: int, seed: int) -> dict:
    """{'R@1', 'R@5', 'linear_top1'} (percent) of the statistics; train/test: (labels, features).
    linear: the config's linear-probe section (epochs, lr, momentum, weight_decay, decay_epochs)."""
    (train_labels, train_x), (test_labels, test_x) = train, test
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-8
    train_z, test_z = (train_x - mean) / std, (test_x - mean) / std
    recall = retrieval.recall_at_k(
        retrieval.l2_normalize(test_z), test_labels, retrieval.l2_normalize(train_z), train_labels, ks=(1, 5)
    )
    head, _ = classifier.fit_linear_head(
        train_z,
        train_labels,
        num_classes,
        epochs=linear.epochs,
        lr=linear.lr,
        momentum=linear.momentum,
        weight_decay=linear.weight_decay,
        decay_epochs=linear.decay_epochs,
        batch=batch,
        seed=seed,
    )
    probs = classifier.head_probabilities(num_classes, head, test_z)
    return {**recall, "linear_top1": accuracy.accuracy(probs, test_labels, ks=(1,))["top1"]}
