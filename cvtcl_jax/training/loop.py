"""The one training loop: pretraining stages and the evaluation's classifiers both run it.

Per batch: the jitted step; the previous step's metrics checked for NaN/Inf while this one runs;
at its cadences the metric window's means (with throughput, epoch and ETA) to TensorBoard and the
log, a periodic evaluation, and a checkpoint. The caller owns the checkpoint manager and the
writer and closes them (`with`), so they are closed on every exit path, divergence included.

Preemption: SIGTERM or SIGINT (SLURM, Kubernetes, spot VMs, `timeout`, Ctrl-C) while the loop
runs is noted, and at the next step boundary (the same one on every host) the loop saves a
checkpoint and raises `Preempted`; `main.py` then exits with EXIT_PREEMPTED, and the same command
resumes to the parameters of an uninterrupted run. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from cvtcl_jax import console

# Metrics that stop the run when they are not finite (the others, e.g. accuracies, only inform).
WATCHED = ("loss", "grad_norm")
# main.py's exit code after a preemption (EX_TEMPFAIL: run the same command again).
EXIT_PREEMPTED = 75


class TrainingDiverged(RuntimeError):
    """A watched metric became NaN or Inf; the last good checkpoint is kept."""


class Preempted(RuntimeError):
    """SIGTERM or SIGINT stopped the run at a step boundary, after a checkpoint."""


class StopSignals:
    """Notes SIGTERM and SIGINT while a loop runs (handlers in the main thread only) and says, at
    a step boundary, whether to stop there: on every host at the same step (JAX's preemption sync
    point, or any host's note gathered at each step)."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _note(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        self.received = signal.Signals(signum).name
        logging.warning("%s received: stopping at the next step boundary, after a checkpoint", self.received)

    def stop_at(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.received is not None
        try:
            synced = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # no preemption service in this cluster
            synced = False
        noted = multihost_utils.process_allgather(np.int32(self.received is not None))
        return bool(synced or np.any(noted))


@dataclasses.dataclass
class Loop:
    """Runs `step` over `batches` from batch `start` to `total`, checkpointing with `save`.

    name: what the log calls the run ('init_rgb', 'finetune_rgb').
    step: (state, batch) -> (state, metrics dict of scalars), jitted.
    save: (mngr, batch number, state, progress dict) -> None; asynchronous saves are fine.
    mngr, writer: the run's checkpoint manager and metric writer, opened and closed by the caller.
    total, steps_per_epoch: batches of the whole run and of one epoch (for the epoch and the ETA).
    log_every, checkpoint_every: the cadences in batches; both also fire at the last batch.
    clips_per_batch: the global batch, for `clips_per_sec` (0: not written).
    prefix: TensorBoard prefix of the metric means ('train/', 'finetune/rgb/train/').
    evaluate: optional (state) -> {name: float}, run every `evaluate_every` batches and at the
      end; its results go to TensorBoard under `evaluation_name/` and into the progress.
    on_divergence: the setting to change when the loss diverges, a sentence of the error message
      ('Lower optim.lr (now 0.003).').
    """

    name: str
    step: Callable
    save: Callable
    mngr: ocp.CheckpointManager
    writer: metric_writers.MetricWriter
    total: int
    steps_per_epoch: int
    log_every: int
    checkpoint_every: int
    prefix: str = "train/"
    clips_per_batch: int = 0
    evaluate: Callable[[Any], dict] | None = None
    evaluate_every: int = 0
    evaluation_name: str = "retrieval"
    on_divergence: str = ""

    def _checked(self, batch_no: int, metrics) -> dict:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = [k for k in WATCHED if k in host and not np.isfinite(host[k])]
        if bad:
            self.mngr.wait_until_finished()
            raise TrainingDiverged(
                f"{self.name}: {', '.join(bad)} became NaN/Inf at batch {batch_no} ({host}). Training "
                f"stopped; the last good checkpoint (batch {self.mngr.latest_step()}) is kept in "
                f"{self.mngr.directory}. {self.on_divergence + ' ' if self.on_divergence else ''}Then run "
                "the same command to resume from it"
            )
        return host

    def train(self, state, batches: Iterator[dict], start: int, progress: dict) -> tuple[Any, dict]:
        """Trains from batch `start` (the checkpoint's) on; `progress` is the checkpoint's (its
        'padded_videos' count and evaluation history continue). Returns (state, progress) where
        progress also holds 'final': the last window's means."""
        progress = {**progress, "padded_videos": int(progress.get("padded_videos", 0))}
        if self.evaluate is not None:
            progress[self.evaluation_name] = list(progress.get(self.evaluation_name, []))
        report = periodic_actions.ReportProgress(
            num_train_steps=self.total, writer=self.writer, every_steps=self.log_every
        )
        window: list[dict] = []
        pending = None  # the previous step's (batch number, metrics), checked while the next runs
        last_log = (start, time.perf_counter())
        final: dict = {}  # the last window's means
        bar = console.Progress(self.total, self.name, initial=start, unit="batch")
        with StopSignals() as signals, bar:
            for i in range(start, self.total):
                batch = next(batches)
                padded = batch.pop("padded", None)
                if padded is not None:
                    progress["padded_videos"] += int(np.sum(padded))
                state, metrics = self.step(state, batch)
                if pending is not None:
                    window.append(self._checked(*pending))
                n = i + 1
                pending = (n, metrics)
                report(n)
                last = n == self.total
                stop = not last and signals.stop_at(n)
                save_now = last or stop or n % self.checkpoint_every == 0
                log_now = last or n % self.log_every == 0
                evaluate_now = self.evaluate is not None and (
                    last or (self.evaluate_every > 0 and n % self.evaluate_every == 0)
                )
                if save_now or log_now or evaluate_now:
                    window.append(self._checked(*pending))
                    pending = None
                if log_now:
                    final, last_log = self._log(n, window, last_log, progress), (n, time.perf_counter())
                    window = []
                bar.update(n, **(_shown(final) if log_now else {}))
                if evaluate_now:
                    with report.timed(self.evaluation_name):
                        self._evaluate(n, state, progress)
                if save_now:
                    progress.update(epoch=n / self.steps_per_epoch, done=last)
                    with report.timed("checkpoint"):
                        self.save(self.mngr, n, state, progress)
                if stop:
                    self._preempted(n, signals.received)
        self.mngr.wait_until_finished()
        self.writer.flush()
        return state, {**progress, "final": final}

    def _evaluate(self, n: int, state, progress: dict) -> None:
        """Runs the periodic evaluation after batch `n`; its results to TensorBoard and progress."""
        result = self.evaluate(state)
        self.writer.write_scalars(n, {f"{self.evaluation_name}/{k}": v for k, v in result.items()})
        progress[self.evaluation_name].append({"batch": n, "epoch": n / self.steps_per_epoch, **result})
        logging.info("%s batch %d %s: %s", self.name, n, self.evaluation_name, result)

    def _preempted(self, n: int, received: str | None):
        """Stops after batch `n`'s checkpoint has been written."""
        self.mngr.wait_until_finished()
        self.writer.flush()
        raise Preempted(
            f"{self.name}: {received or 'a preemption notice'} stopped it after batch {n} of "
            f"{self.total}, with a checkpoint in {self.mngr.directory}. Run the same command to resume"
        )

    def _log(self, n: int, window: list[dict], last_log: tuple[int, float], progress: dict) -> dict:
        """Writes and logs the window's means with throughput, ETA and epoch; returns them."""
        now = time.perf_counter()
        rate = (n - last_log[0]) / max(now - last_log[1], 1e-9)
        means = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
        means.update(
            batches_per_sec=rate,
            eta_minutes=(self.total - n) / max(rate, 1e-9) / 60,
            epoch=n / self.steps_per_epoch,
            padded_videos=progress["padded_videos"],
        )
        if self.clips_per_batch:
            means["clips_per_sec"] = rate * self.clips_per_batch
        self.writer.write_scalars(n, {f"{self.prefix}{k}": v for k, v in means.items()})
        shown = ", ".join(f"{k} {means[k]:.4g}" for k in ("loss", "inst_top1", "top1") if k in means)
        logging.info(
            "%s batch %d/%d: %s, %.1f batches/s, ETA %.1f min",
            self.name,
            n,
            self.total,
            shown,
            rate,
            means["eta_minutes"],
        )
        return means


def _shown(means: dict) -> dict:
    """What the progress bar shows of a window's means: loss, accuracy, throughput."""
    shown = {k: means[k] for k in ("loss", "top1") if k in means}
    if "clips_per_sec" in means:
        shown["clips/s"] = round(means["clips_per_sec"], 1)
    return shown
