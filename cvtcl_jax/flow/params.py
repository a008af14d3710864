"""The parameters of Dual TV-L1 flow, shared by OpenCV and our JAX implementation (no JAX import)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TVL1Params:
    """OpenCV's `DualTVL1OpticalFlow` parameters, with its defaults."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    num_scales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5

    def __post_init__(self):
        if self.gamma != 0:
            raise ValueError("gamma != 0 (OpenCV's illumination term) is not implemented; use gamma=0")
        if self.median_filtering not in (0, 1, 5):
            raise ValueError(
                f"median_filtering must be 5 (OpenCV's default) or 0/1 (none), got {self.median_filtering}"
            )
        if not 0 < self.scale_step < 1:
            raise ValueError(f"scale_step must be in (0, 1), got {self.scale_step}")
        for name in ("num_scales", "warps", "inner_iterations", "outer_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def opencv_args(self) -> tuple:
        """Positional arguments of `cv2.optflow.DualTVL1OpticalFlow_create` for the same flow."""
        return (
            self.tau,
            self.lambda_,
            self.theta,
            self.num_scales,
            self.warps,
            self.epsilon,
            self.inner_iterations,
            self.outer_iterations,
            self.scale_step,
            self.gamma,
            self.median_filtering,
        )


OPENCV_DEFAULTS = TVL1Params()
