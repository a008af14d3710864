"""The geometry of a training sample, shared by the pipeline and TF-free code (benchmarks)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Clip geometry: T frames of crop_size^2, and the LTCL segments (num_segments = 0: no LTCL)."""

    num_frames: int = 32
    crop_size: int = 128
    num_segments: int = 4
    segment_len: int = 8

    def __post_init__(self):
        if self.num_frames < 1 or self.crop_size < 1 or self.num_segments < 0:
            raise ValueError(f"bad clip spec {self}: sizes must be positive")
        if self.num_segments and (self.num_segments < 2 or self.segment_len < 1):
            raise ValueError(f"LTCL needs num_segments >= 2 and segment_len >= 1; got {self}")

    @property
    def frames_needed(self) -> int:
        """Frames a video needs to give every clip without looping."""
        return max(self.num_frames, self.num_segments * self.segment_len)
