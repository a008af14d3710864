"""The one training loop on a toy step: cadences, metric windows, evaluation, resume, NaN stop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvtcl_jax import checkpoints
from cvtcl_jax.training.loop import Loop, TrainingDiverged


class RecordingWriter:
    """The MetricWriter calls the loop makes, recorded: {tag: {step: value}}."""

    def __init__(self):
        self.scalars: dict[str, dict[int, float]] = {}
        self.flushed = False

    def write_scalars(self, step, scalars):
        for k, v in scalars.items():
            self.scalars.setdefault(k, {})[int(step)] = float(v)

    def flush(self):
        self.flushed = True


@jax.jit
def toy_step(state, batch):
    """Loss = batch mean of x * w; the 'update' adds 1 to w; grad_norm = |mean x|."""
    loss = jnp.mean(batch["x"]) * state["w"]
    return {"w": state["w"] + 1.0}, {"loss": loss, "grad_norm": jnp.abs(jnp.mean(batch["x"]))}


def batches(start, values, padded=1):
    for v in values[start:]:
        yield {"x": np.full(4, v, np.float32), "padded": np.array([padded, 0, 0, 0])}


def make_loop(mngr, writer, total, evaluated, **kw):
    return Loop(
        name="toy",
        step=toy_step,
        save=checkpoints.save_classifier,
        mngr=mngr,
        writer=writer,
        total=total,
        steps_per_epoch=2,
        log_every=2,
        checkpoint_every=3,
        evaluate=lambda state: evaluated.append(float(state["w"])) or {"score": float(state["w"]) * 10},
        evaluate_every=4,
        **kw,
    )


def manager(path):
    return checkpoints.manager(path, keep=10, item_names=checkpoints.CLASSIFIER_ITEMS)


def test_cadences_windows_and_progress(tmp_path):
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    writer, evaluated = RecordingWriter(), []
    with manager(tmp_path) as mngr:
        loop = make_loop(mngr, writer, 7, evaluated, clips_per_batch=4)
        state, progress = loop.train({"w": jnp.float32(1.0)}, batches(0, values), 0, {"view": "toy"})
        assert mngr.all_steps() == [3, 6, 7]  # every 3 and the last
    assert float(state["w"]) == 8.0 and writer.flushed
    # Window means at batches 2, 4, 6 and the last (7); batch i (from 0) sees w = i + 1.
    losses = [v * (i + 1) for i, v in enumerate(values)]
    assert writer.scalars["train/loss"] == pytest.approx(
        {2: np.mean(losses[0:2]), 4: np.mean(losses[2:4]), 6: np.mean(losses[4:6]), 7: losses[6]}
    )
    assert writer.scalars["train/epoch"] == {2: 1.0, 4: 2.0, 6: 3.0, 7: 3.5}
    assert writer.scalars["train/padded_videos"] == {2: 2, 4: 4, 6: 6, 7: 7}
    assert {"train/eta_minutes", "train/clips_per_sec", "train/batches_per_sec"} <= set(writer.scalars)
    # Evaluated every 4 batches and at the end, on the state after that batch.
    assert evaluated == [5.0, 8.0]
    assert writer.scalars["retrieval/score"] == {4: 50.0, 7: 80.0}
    assert progress["retrieval"] == [
        {"batch": 4, "epoch": 2.0, "score": 50.0},
        {"batch": 7, "epoch": 3.5, "score": 80.0},
    ]
    assert progress["done"] and progress["view"] == "toy" and progress["final"]["loss"] == losses[6]
    with manager(tmp_path) as mngr:
        _, saved = checkpoints.restore_classifier(mngr, {"w": jnp.float32(0)})
    assert saved["batches"] == 7 and saved["done"] and saved["padded_videos"] == 7 and "final" not in saved


def test_resumed_run_continues_counts_and_history(tmp_path):
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    with manager(tmp_path / "a") as mngr:
        whole, _ = make_loop(mngr, RecordingWriter(), 7, []).train(
            {"w": jnp.float32(1.0)}, batches(0, values), 0, {}
        )
    with manager(tmp_path / "b") as mngr:  # a run stopped after its checkpoint at batch 6
        make_loop(mngr, RecordingWriter(), 6, []).train({"w": jnp.float32(1.0)}, batches(0, values), 0, {})
    with manager(tmp_path / "b") as mngr:
        state, progress = checkpoints.restore_classifier(mngr, {"w": jnp.float32(0)})
        assert progress["batches"] == 6 and progress["padded_videos"] == 6
        state, progress = make_loop(mngr, RecordingWriter(), 7, []).train(
            state, batches(6, values), 6, progress
        )
    assert float(state["w"]) == float(whole["w"])
    assert progress["padded_videos"] == 7 and [r["batch"] for r in progress["retrieval"]] == [4, 6, 7]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    values = [1.0, 2.0, 3.0, 4.0, np.nan, 6.0, 7.0]
    with manager(tmp_path) as mngr:
        loop = make_loop(mngr, RecordingWriter(), 7, [], on_divergence="Lower the lr.")
        with pytest.raises(TrainingDiverged, match=r"toy: loss, grad_norm became NaN/Inf at batch 5") as err:
            loop.train({"w": jnp.float32(1.0)}, batches(0, values), 0, {})
        assert mngr.all_steps() == [3]
    assert "last good checkpoint (batch 3)" in str(err.value) and "Lower the lr. Then run" in str(err.value)


def test_accuracy_may_be_nan_without_stopping(tmp_path):
    @jax.jit
    def step(state, batch):
        return state, {"loss": jnp.mean(batch["x"]), "top1": jnp.float32(np.nan)}

    with manager(tmp_path) as mngr:
        loop = Loop("toy", step, checkpoints.save_classifier, mngr, RecordingWriter(), 3, 3, 1, 3)
        _, progress = loop.train({"w": jnp.float32(0)}, batches(0, [1.0, 2.0, 3.0]), 0, {})
    assert progress["done"] and "retrieval" not in progress
