"""Nearest-neighbour video retrieval (docs/method.md §6) as pure NumPy functions.

Clip features are L2-normalised, averaged per video and re-normalised; test videos query the
train videos by cosine similarity; R@k counts a query as a hit if any of its k nearest train
videos has its class.

CoCLR's variant (`coclr_protocol`, to put numbers next to theirs): the gallery is one random clip
per train video instead of the dense average, and each set (test, train) has its own mean
subtracted before the features are normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def single_clip_features(clip_features: np.ndarray, video_index: np.ndarray, labels: np.ndarray, seed: int):
    """CoCLR's gallery: one clip per video drawn uniformly with `seed`, raw (not normalised).

    Returns (videos (V,) sorted, labels (V,), features (V, F)) like `video_features`.
    """
    videos, inverse = np.unique(video_index, return_inverse=True)
    rng = np.random.default_rng(seed)
    rows = np.array([rng.choice(np.flatnonzero(inverse == v)) for v in range(len(videos))], np.int64)
    return videos, labels[rows].astype(np.int64), clip_features[rows].astype(np.float64)


def centre(features: np.ndarray) -> np.ndarray:
    """(N, F) minus the set's mean feature, re-normalised (CoCLR's per-set mean centring)."""
    return l2_normalize(features - features.mean(axis=0, keepdims=True))


def fuse(*features: np.ndarray) -> np.ndarray:
    """Two-stream video features: the mean of the views' unit vectors (same video order), normalised."""
    return l2_normalize(np.mean(np.stack(features), axis=0))


def ranking(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(Q, G) gallery indices from most to least similar (cosine; ties keep gallery order)."""
    return np.argsort(-(query @ gallery.T), axis=1, kind="stable")


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
    hits = gallery_labels[ranking(query, gallery)] == query_labels[:, None]  # (Q, G) in rank order
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), len(gallery))
    return {f"R@{k}": float(100.0 * np.mean(first_hit < min(k, len(gallery)))) for k in ks}


def query_and_gallery(train: Mapping, test: Mapping, coclr: bool = False, seed: int = 0) -> dict:
    """The retrieval sets of one view from per-clip rows ({'features', 'video_index', 'label'}):
    test videos query train videos, each side dense (`video_features`) or, with `coclr`, CoCLR's
    protocol (one clip per gallery video, both sides centred).

    Returns {'query', 'gallery': (V, F) unit vectors; 'query_videos', 'query_labels',
    'gallery_videos', 'gallery_labels': (V,)}.
    """
    qv, ql, q = video_features(test["features"], test["video_index"], test["label"])
    if coclr:
        gv, gl, g = single_clip_features(train["features"], train["video_index"], train["label"], seed)
        q, g = centre(q), centre(g)
    else:
        gv, gl, g = video_features(train["features"], train["video_index"], train["label"])
    return {
        "query_videos": qv,
        "query_labels": ql,
        "query": q,
        "gallery_videos": gv,
        "gallery_labels": gl,
        "gallery": g,
    }


def fused_sets(a: Mapping, b: Mapping) -> dict:
    """Two-stream retrieval sets from the two views' sets of the same videos."""
    for key in ("query_videos", "gallery_videos"):
        if not np.array_equal(a[key], b[key]):
            raise ValueError(
                "two-stream retrieval needs both views of the same videos; the view features differ"
            )
    return {**a, "query": fuse(a["query"], b["query"]), "gallery": fuse(a["gallery"], b["gallery"])}


def recall(sets: Mapping, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """`recall_at_k` of retrieval sets: what the evaluation and the in-training check report."""
    return recall_at_k(sets["query"], sets["query_labels"], sets["gallery"], sets["gallery_labels"], ks)
