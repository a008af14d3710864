"""Optimiser and learning-rate schedule of docs/method.md §2 (PyTorch-style Adam with L2 decay)."""

from __future__ import annotations

from collections.abc import Sequence

import optax


def step_decay_schedule(
    base_lr: float, steps_per_epoch: int, decay_epochs: Sequence[float] = (), factor: float = 0.1
) -> optax.Schedule:
    """lr = base_lr, multiplied by `factor` at each epoch of `decay_epochs` (counted in steps)."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    boundaries = {int(round(e * steps_per_epoch)): factor for e in decay_epochs}
    return optax.piecewise_constant_schedule(base_lr, boundaries)


def adam_l2(schedule: optax.ScalarOrSchedule, weight_decay: float) -> optax.GradientTransformation:
    """torch.optim.Adam(weight_decay=wd): wd * param is added to the gradient before Adam.

    This is L2 regularisation, not AdamW's decoupled decay, as CoCLR and the paper train.
    """
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(schedule))
