"""Video-level accuracy of a classifier: the softmax of every dense clip (and crop) of a test video
averaged, then top-k against the video's label (docs/method.md §6)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def video_predictions(probs: np.ndarray, video_index: np.ndarray, labels: np.ndarray):
    """Per-video class probabilities: the mean of the softmax of every clip / crop row.

    probs: (N, C); video_index, labels: (N,). Returns (videos (V,) sorted, labels (V,), probs (V, C)).
    """
    videos, inverse = np.unique(video_index, return_inverse=True)
    sums = np.zeros((len(videos), probs.shape[1]), np.float64)
    counts = np.zeros(len(videos), np.float64)
    np.add.at(sums, inverse, probs.astype(np.float64))
    np.add.at(counts, inverse, 1.0)
    video_labels = np.zeros(len(videos), np.int64)
    video_labels[inverse] = labels
    return videos, video_labels, sums / counts[:, None]


def accuracy(probs: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{'top1': .., 'top5': ..} in percent: the label among the k most probable classes (k <= C)."""
    if len(probs) == 0:
        raise ValueError("accuracy of an empty set of videos")
    order = np.argsort(-probs, axis=1, kind="stable")
    return {
        f"top{k}": float(100.0 * np.mean((order[:, : min(k, probs.shape[1])] == labels[:, None]).any(1)))
        for k in ks
    }
