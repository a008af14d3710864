"""Linear probe and finetuning pieces against hand-computed cases (no data, no backbone)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvtcl_jax import optim
from cvtcl_jax.eval import accuracy, classifier
from cvtcl_jax.eval.classifier import FinetuneModel, LinearHead
from cvtcl_jax.models import S3D
from tests.tiny import SMALLEST

PROBE = dict(epochs=30, lr=0.1, momentum=0.9, weight_decay=1e-3, decay_epochs=(20,), batch=16, seed=0)


def _clustered(rng, n_per_class, num_classes, dim, spread):
    centres = rng.standard_normal((num_classes, dim)) * 3
    labels = np.repeat(np.arange(num_classes), n_per_class)
    return centres[labels] + spread * rng.standard_normal((len(labels), dim)), labels


def test_accuracy_and_video_averaging_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1]])
    # video 4 = rows 0 and 1: mean (0.4, 0.25, 0.35) -> class 0; video 9 = rows 2 and 3 -> class 1
    videos, labels, video_probs = accuracy.video_predictions(
        probs, np.array([4, 4, 9, 9]), np.array([2, 2, 1, 1])
    )
    np.testing.assert_array_equal(videos, [4, 9])
    np.testing.assert_array_equal(labels, [2, 1])
    np.testing.assert_allclose(video_probs[0], [0.4, 0.25, 0.35])
    assert accuracy.accuracy(video_probs, labels, ks=(1, 2)) == {"top1": 50.0, "top2": 100.0}
    # k above the class count counts every video
    assert accuracy.accuracy(video_probs, labels, ks=(5,)) == {"top5": 100.0}


def test_linear_probe_separates_separable_features_perfectly():
    rng = np.random.default_rng(0)
    train, train_labels = _clustered(rng, 20, 5, 32, 0.3)
    variables, steps = classifier.fit_linear_head(train, train_labels, 5, **PROBE)
    assert steps == 30 * (100 // 16)
    test = train[::3] + 0.1 * rng.standard_normal(train[::3].shape)
    probs = classifier.head_probabilities(5, variables, test)
    assert accuracy.accuracy(probs, train_labels[::3])["top1"] == 100.0


def test_linear_probe_on_random_features_is_at_chance():
    rng = np.random.default_rng(1)
    num_classes = 4
    train, test = rng.standard_normal((200, 16)), rng.standard_normal((400, 16))
    variables, _ = classifier.fit_linear_head(train, rng.integers(0, num_classes, 200), num_classes, **PROBE)
    probs = classifier.head_probabilities(num_classes, variables, test)
    top1 = accuracy.accuracy(probs, rng.integers(0, num_classes, 400))["top1"]
    assert abs(top1 - 100 / num_classes) < 8.0


def test_linear_probe_logs_each_epoch_and_decays_the_lr():
    rng = np.random.default_rng(2)
    feats, labels = _clustered(rng, 8, 2, 4, 0.5)
    seen = []
    classifier.fit_linear_head(
        feats,
        labels,
        2,
        **{**PROBE, "epochs": 3, "decay_epochs": (2,), "batch": 8},
        log=lambda e, m: seen.append((e, m)),
    )
    assert [e for e, _ in seen] == [1, 2, 3]
    assert seen[0][1]["lr"] == pytest.approx(0.1) and seen[2][1]["lr"] == pytest.approx(0.01)
    assert set(seen[0][1]) == {"loss", "top1", "lr"}


def test_linear_head_normalises_then_batch_norms():
    head = LinearHead(3)
    x = jnp.arange(12.0).reshape(4, 3) + 1
    variables = head.init(jax.random.key(0), x)
    scaled = head.apply(variables, 10 * x)  # L2 normalisation first: the feature scale is irrelevant
    np.testing.assert_allclose(head.apply(variables, x), scaled, rtol=1e-5)
    _, updates = head.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(updates["batch_stats"]["bn"]["mean"], 0)  # running stats move in training


class _PooledDense(nn.Module):
    """A stand-in backbone (S3D's interface: clips, train -> (B, out_features)) that inits in ms."""

    out_features: int = 6

    @nn.compact
    def __call__(self, clips, train=False):
        x = jnp.mean(clips.astype(jnp.float32), axis=(1, 2, 3))
        return nn.BatchNorm(use_running_average=not train)(nn.Dense(self.out_features)(x))


def test_finetune_variables_draw_the_classifier_as_the_models_init():
    model = FinetuneModel(_PooledDense(), num_classes=5, dropout=0.5)
    clips = jnp.zeros((1, 2, 4, 4, 3), jnp.uint8)
    full = model.init(jax.random.key(3), clips)
    backbone = {"params": full["params"]["backbone"], "batch_stats": full["batch_stats"]["backbone"]}
    got = classifier.finetune_variables(model, backbone, jax.random.key(3))
    jax.tree.map(np.testing.assert_array_equal, got, dict(full))
    other = classifier.finetune_variables(model, backbone, jax.random.key(4))
    assert not np.array_equal(other["params"]["classifier"]["kernel"], full["params"]["classifier"]["kernel"])


@pytest.mark.slow
def test_finetune_backbone_learns_at_a_tenth_of_the_classifier_rate():
    model = FinetuneModel(S3D(width_multiplier=0.125, **SMALLEST), num_classes=3, dropout=0.5)
    clips = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 8, 32, 32, 3)), jnp.uint8)
    variables = jax.jit(model.init)(jax.random.key(0), clips)
    schedule = optim.step_decay_schedule(1e-3, 1)
    optimizer = classifier.finetune_optimizer(schedule, 0.0, 0.1)
    state = classifier.create_state(variables, optimizer, 0)
    step = jax.jit(classifier.make_train_step(model.apply, optimizer, schedule))
    new, metrics = step(state, clips, jnp.array([0, 1, 2, 0]))
    assert np.isfinite(metrics["loss"])

    def largest_change(tree_a, tree_b):  # in NumPy: eager JAX compiles each operation per shape
        a, b = jax.tree.leaves(jax.device_get(tree_a)), jax.tree.leaves(jax.device_get(tree_b))
        return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))

    # Adam's first step moves every parameter with a gradient by ~lr: 1e-3 head, 1e-4 backbone.
    assert largest_change(new.params["classifier"], state.params["classifier"]) == pytest.approx(
        1e-3, rel=0.01
    )
    assert largest_change(new.params["backbone"], state.params["backbone"]) == pytest.approx(1e-4, rel=0.01)
    assert new.batch_stats["backbone"] is not None  # BN statistics are trained too
