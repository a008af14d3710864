"""Pictures of retrieval results, like the paper's Figure 4: a query and its nearest train videos.

One row per query: the query's middle frame (white frame), then its top-k neighbours' middle
frames, framed green when the neighbour has the query's class and red when not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
import tensorflow as tf

from cvtcl_jax.data import eval_clips
from cvtcl_jax.eval import retrieval

WHITE, GREEN, RED = (255, 255, 255), (40, 200, 40), (220, 40, 40)


def _tile(frame: np.ndarray, colour, height: int, width: int, border: int) -> np.ndarray:
    """(H, W, 3) uint8 frame resized into a (height, width) tile with a coloured border."""
    inner = tf.image.resize(frame, (height - 2 * border, width - 2 * border), antialias=True)
    tile = np.empty((height, width, 3), np.uint8)
    tile[:] = colour
    tile[border : height - border, border : width - border] = np.clip(np.round(inner.numpy()), 0, 255)
    return tile


def neighbour_grid(
    queries: Sequence[int],
    neighbours: Sequence[Sequence[int]],
    same_class: Sequence[Sequence[bool]],
    query_frames: Mapping[int, np.ndarray],
    gallery_frames: Mapping[int, np.ndarray],
    height: int = 96,
    width: int = 128,
    border: int = 4,
) -> np.ndarray:
    """(Q * height, (1 + k) * width, 3) uint8 picture.

    queries: test video indices; neighbours: per query, the gallery video indices in rank order;
    same_class: per query, whether each neighbour has the query's class; *_frames: video index ->
    middle frame.
    """
    rows = []
    for q, nbrs, hits in zip(queries, neighbours, same_class, strict=True):
        tiles = [_tile(query_frames[q], WHITE, height, width, border)]
        tiles += [
            _tile(gallery_frames[n], GREEN if hit else RED, height, width, border)
            for n, hit in zip(nbrs, hits, strict=True)
        ]
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_neighbours(run, view: str, sets: dict, k: int = 3) -> None:
    """Figure 4 style, to the run's TensorBoard: `eval.num_pictures` queries spread over the test set
    with their top-k. run: an EvalRun; sets: retrieval's query/gallery features, videos, labels."""
    n = min(run.config.eval.num_pictures, len(sets["query"]))
    if n <= 0 or jax.process_index() > 0:
        return
    rows = np.linspace(0, len(sets["query"]) - 1, n).round().astype(int)
    order = retrieval.ranking(sets["query"][rows], sets["gallery"])[:, :k]
    queries = sets["query_videos"][rows]
    neighbours = sets["gallery_videos"][order]
    same = sets["gallery_labels"][order] == sets["query_labels"][rows][:, None]
    # RGB frames are the readable picture for either view when the data has them.
    shown = "rgb" if "rgb" in run.info.views else view
    q_frames = eval_clips.middle_frames(run.info, "test", shown, queries)
    g_frames = eval_clips.middle_frames(run.info, "train", shown, neighbours.ravel())
    grid = neighbour_grid(queries.tolist(), neighbours.tolist(), same.tolist(), q_frames, g_frames)
    run.writer.write_images(0, {f"retrieval/{view}/nearest_neighbours": grid[None]})
