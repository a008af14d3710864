"""The skeleton everything that trains shares: a pretraining stage (training/stage.py) and the
evaluation's classifiers (eval/protocols.py).

A `Trainer` holds what such a run is (its name, dataset, length, learning-rate schedule and seed);
`Trainer.fit` does what every one of them does with it: open the checkpoint manager (and a metric
writer) in its workdir, restore the last checkpoint or start fresh, build the step and the input
from the batch it starts at, and run the one loop (training/loop.py) to the end. What differs is
passed in: the checkpoint format (`Checkpointing`), the first state, the step and the dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import optax
from clu import metric_writers
from jax.sharding import Mesh

from cvtcl_jax import checkpoints, optim
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.training.inputs import batches_per_epoch, device_batches, run_seed
from cvtcl_jax.training.loop import Loop


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """A run's checkpoint format: its Orbax item names, and how a state is restored and saved.

    restore: (mngr, fresh state) -> (state, progress) of the latest checkpoint.
    save: (mngr, batch number, state, progress) -> None.
    """

    items: tuple[str, ...]
    restore: Callable
    save: Callable


CLASSIFIER = Checkpointing(
    checkpoints.CLASSIFIER_ITEMS, checkpoints.restore_classifier, checkpoints.save_classifier
)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """One training run: `name` (its log name and its seed's), in `workdir`, for `epochs` over the
    training subset of `info` in global batches of config.global_batch, at `lr` multiplied by
    `decay_factor` at each of `decay_epochs`; `optimizer_fn(schedule)` builds its optimiser."""

    name: str
    config: Any
    info: Any
    mesh: Mesh
    workdir: Path
    epochs: int
    lr: float
    decay_epochs: tuple[float, ...]
    optimizer_fn: Callable[[optax.Schedule], optax.GradientTransformation]
    decay_factor: float = 0.1

    @functools.cached_property
    def steps_per_epoch(self) -> int:
        return batches_per_epoch(self.info, self.config.global_batch)

    @property
    def total(self) -> int:
        """Batches of the whole run."""
        return self.epochs * self.steps_per_epoch

    @functools.cached_property
    def schedule(self) -> optax.Schedule:
        return optim.step_decay_schedule(self.lr, self.steps_per_epoch, self.decay_epochs, self.decay_factor)

    @functools.cached_property
    def optimizer(self) -> optax.GradientTransformation:
        return self.optimizer_fn(self.schedule)

    @property
    def seed(self) -> int:
        """The seed of its initialization and of its input stream."""
        return run_seed(self.config.seed, self.name)

    def fit(
        self,
        state,
        checkpointing: Checkpointing,
        make_step: Callable[[Any], Callable],
        dataset_fn: Callable,
        spec: ClipSpec,
        *,
        start: Callable[[Any, Any], tuple[Any, dict]] | None = None,
        resumed: Callable[[dict], dict] | None = None,
        writer: metric_writers.MetricWriter | None = None,
        **loop_settings,
    ) -> tuple[Any, dict]:
        """Trains from the last checkpoint in the workdir (or from `start`'s state) to the last
        batch; a finished run is restored without building its step or input.

        state: the fresh state placed on the mesh, or its template (ShapeDtypeStructs with the
          shardings) when `start` makes the first state; a checkpoint is restored into it.
        make_step: (the state it starts from) -> step (state, batch) -> (state, metrics).
        dataset_fn: training_clips.pretrain_dataset or labelled_clip_dataset, its own keywords bound.
        start: (state, writer) -> (first state, progress) when there is no checkpoint (None: `state`).
        resumed: (restored progress) -> progress, when there is one.
        writer: the metric writer to use (None: one of its own in the workdir, closed at the end).
        loop_settings: Loop's optional fields (evaluate, prefix, on_divergence, ...).
        Returns (state, progress) where progress holds the loop's 'final' window and history.
        """
        tc = self.config.train
        with contextlib.ExitStack() as stack:
            mngr = stack.enter_context(
                checkpoints.manager(self.workdir, keep=tc.keep_checkpoints, item_names=checkpointing.items)
            )
            if writer is None:
                own = metric_writers.create_default_writer(self.workdir, just_logging=jax.process_index() > 0)
                writer = stack.enter_context(contextlib.closing(own))
            if mngr.latest_step() is not None:
                state, progress = checkpointing.restore(mngr, state)
                progress = resumed(progress) if resumed else progress
            else:
                state, progress = start(state, writer) if start else (state, {})
            first = int(progress.get("batches", 0))
            if first >= self.total:
                return state, progress
            loop = Loop(
                name=self.name,
                step=make_step(state),
                save=checkpointing.save,
                mngr=mngr,
                writer=writer,
                total=self.total,
                steps_per_epoch=self.steps_per_epoch,
                log_every=tc.log_every_steps,
                checkpoint_every=tc.checkpoint_every_steps,
                **loop_settings,
            )
            batches = device_batches(self.config, self.info, self.mesh, dataset_fn, spec, self.seed, first)
            return loop.train(state, batches, first, progress)
