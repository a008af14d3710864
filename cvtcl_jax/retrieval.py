"""Nearest-neighbour video retrieval (SPEC 6) as pure NumPy functions.

Clip features are L2-normalised, averaged per video and re-normalised; test videos query the
train videos by cosine similarity; R@k counts a query as a hit if any of its k nearest train
videos has its class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_KS = (1, 5, 10, 20)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """(N, F) rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def video_features(clip_features: np.ndarray, video_index: np.ndarray, labels: np.ndarray):
    """Per-video features from per-clip rows (padding rows already removed).

    clip_features: (N, F); video_index, labels: (N,). Returns (videos (V,) sorted, labels (V,),
    features (V, F) unit vectors): the mean of each video's normalised clip features, normalised.
    """
    videos, inverse = np.unique(video_index, return_inverse=True)
    sums = np.zeros((len(videos), clip_features.shape[1]), np.float64)
    np.add.at(sums, inverse, l2_normalize(clip_features.astype(np.float64)))
    video_labels = np.zeros(len(videos), np.int64)
    video_labels[inverse] = labels
    return videos, video_labels, l2_normalize(sums)


def recall_at_k(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """{'R@k': percent of queries with a same-class video among their k nearest gallery videos}.

    query: (Q, F), gallery: (G, F) unit vectors; ties are broken by gallery order. k is capped at G.
    """
    if len(query) == 0 or len(gallery) == 0:
        raise ValueError(f"retrieval needs queries and a gallery; got {len(query)} and {len(gallery)}")
    sim = query @ gallery.T
    order = np.argsort(-sim, axis=1, kind="stable")
    hits = gallery_labels[order] == query_labels[:, None]  # (Q, G) in rank order
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), len(gallery))
    return {f"R@{k}": float(100.0 * np.mean(first_hit < min(k, len(gallery)))) for k in ks}
