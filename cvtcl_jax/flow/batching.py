"""TV-L1 flow for a stream of frame pairs of mixed sizes, in fixed-shape batches.

Pairs are put into buckets by size (each side rounded up to a multiple of `multiple`) and
computed `batch_size` at a time in their bucket's buffer, so a dataset of many frame sizes
compiles one program per bucket. A batch that is not full is filled with empty pairs, so every
batch of a bucket runs the same compiled program; a pair's flow is then the same whichever
pairs share its batch, bit for bit (the masks of `tvl1` keep pairs apart, and one program
rounds every position the same way). Another batch size or bucket compiles another program,
whose float rounding (fused multiply-adds) can differ: a few hundredths of a pixel on some
pairs, as between this flow and OpenCV's.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from cvtcl_jax.flow.params import OPENCV_DEFAULTS, TVL1Params
from cvtcl_jax.flow.tvl1 import tvl1_flow


def bucket_shape(height: int, width: int, multiple: int = 32) -> tuple[int, int]:
    """The buffer (H, W) a frame of this size is computed in: each side rounded up to `multiple`."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


class FlowBatcher:
    """Gathers frame pairs into batches of one bucket and computes their flow on the default device.

    `add` queues a pair under a key of the caller's; whenever a bucket holds `batch_size` pairs,
    the batch is dispatched (asynchronously: the host goes on while the device computes).
    `results` hands back the finished (key, flow) pairs, flow (h, w, 2) float32 (dx, dy) at the
    pair's own size; `flush` dispatches the partial batches too. At most `max_in_flight` batches
    are dispatched and not yet collected, which bounds memory.
    """

    def __init__(
        self,
        batch_size: int = 16,
        multiple: int = 32,
        params: TVL1Params = OPENCV_DEFAULTS,
        max_in_flight: int = 2,
    ):
        if batch_size < 1 or multiple < 1 or max_in_flight < 1:
            raise ValueError("batch_size, multiple and max_in_flight must be at least 1")
        self.batch_size, self.multiple, self.params = batch_size, multiple, params
        self.max_in_flight = max_in_flight
        self._queued: dict[tuple[int, int], list] = {}
        self._in_flight: list = []  # (keys, sizes, device array)
        self._done: list[tuple[Hashable, np.ndarray]] = []
        self.pairs_computed = 0
        self.shapes: set[tuple[int, int, int]] = set()  # the (N, H, W) dispatched: one program each

    def add(self, key: Hashable, frame0: np.ndarray, frame1: np.ndarray) -> None:
        """Queues one pair of (h, w) uint8 grayscale frames."""
        if frame0.shape != frame1.shape or frame0.ndim != 2:
            raise ValueError(
                f"a pair needs two (h, w) grayscale frames, got {frame0.shape} and {frame1.shape}"
            )
        bucket = bucket_shape(*frame0.shape, self.multiple)
        queue = self._queued.setdefault(bucket, [])
        queue.append((key, frame0, frame1))
        if len(queue) == self.batch_size:
            self._dispatch(bucket, self._queued.pop(bucket))

    def flush(self) -> None:
        """Dispatches every queued pair, in partial batches."""
        for bucket in list(self._queued):
            self._dispatch(bucket, self._queued.pop(bucket))

    def results(self, wait: bool = False) -> list[tuple[Hashable, np.ndarray]]:
        """The (key, flow) pairs finished so far; with `wait`, after every dispatched batch is done."""
        while self._in_flight and (wait or self._in_flight[0][2].is_ready()):
            self._collect()
        done, self._done = self._done, []
        return done

    @property
    def pending(self) -> int:
        """Pairs queued or computing, not yet handed back by `results`."""
        return sum(map(len, self._queued.values())) + sum(len(b[0]) for b in self._in_flight)

    def _dispatch(self, bucket: tuple[int, int], pairs: list) -> None:
        while len(self._in_flight) >= self.max_in_flight:
            self._collect()
        h, w = bucket
        frames = np.zeros((2, self.batch_size, h, w), np.uint8)
        sizes = np.full((self.batch_size, 2), (h, w))
        for i, (_, a, b) in enumerate(pairs):
            frames[0, i, : a.shape[0], : a.shape[1]] = a
            frames[1, i, : b.shape[0], : b.shape[1]] = b
            sizes[i] = a.shape
        flow = tvl1_flow(frames[0], frames[1], sizes=sizes, params=self.params)
        self.shapes.add(frames.shape[1:])
        self._in_flight.append(([key for key, _, _ in pairs], sizes[: len(pairs)], flow))

    def _collect(self) -> None:
        keys, sizes, flow = self._in_flight.pop(0)
        flow = np.asarray(flow)
        self.pairs_computed += len(keys)
        self._done.extend(
            (key, flow[i, :h, :w]) for i, (key, (h, w)) in enumerate(zip(keys, sizes, strict=True))
        )
