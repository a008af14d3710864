"""Classifiers on the backbone (docs/method.md §6): the linear probe and finetuning, their optimisers
and training step, and the probe's fit on cached features. Their accuracy: eval/accuracy.py.

  LinearHead      frozen feature (B, F) -> L2 normalise -> BN -> linear -> (B, C) logits
  FinetuneModel   clips (B, T, H, W, 3) -> S3D (trained) -> dropout -> linear -> (B, C) logits
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from cvtcl_jax import optim
from cvtcl_jax.models import S3D, l2_normalize


class LinearHead(nn.Module):
    """The linear probe on a frozen feature: (B, F) -> (B, num_classes) logits.

    BN (PyTorch momentum 0.1, eps 1e-5) standardises the normalised feature so one learning rate
    suits every backbone, as in CoCLR's linear protocol.
    """

    num_classes: int

    @nn.compact
    def __call__(self, features, train: bool = False):
        z = l2_normalize(features.astype(jnp.float32))
        z = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(z)
        return nn.Dense(self.num_classes, name="classifier")(z)


class FinetuneModel(nn.Module):
    """The whole network for finetuning: uint8 or float clips -> (B, num_classes) logits."""

    backbone: S3D
    num_classes: int
    dropout: float = 0.9

    @nn.compact
    def __call__(self, clips, train: bool = False):
        x = self.backbone(clips, train=train).astype(jnp.float32)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="classifier")(x)


class _Classifier(nn.Module):
    """FinetuneModel's classifier alone, at the same module path, so its init draws the same values."""

    num_classes: int

    @nn.compact
    def __call__(self, features):
        return nn.Dense(self.num_classes, name="classifier")(features)


def finetune_variables(model: FinetuneModel, backbone_variables: dict, rng: jax.Array) -> dict:
    """FinetuneModel's first variables: the backbone's given, the classifier as `model.init(rng, ..)`
    draws it - without initialising (and compiling the initialisation of) a backbone only to
    replace it."""
    features = jnp.zeros((1, model.backbone.out_features), jnp.float32)
    head = _Classifier(model.num_classes).init(rng, features)["params"]
    return {
        "params": {**head, "backbone": backbone_variables["params"]},
        "batch_stats": {"backbone": backbone_variables["batch_stats"]},
    }


class ClassifierState(struct.PyTreeNode):
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    rng: jax.Array


def create_state(variables: dict, optimizer: optax.GradientTransformation, seed: int) -> ClassifierState:
    params = variables["params"]
    return ClassifierState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def sgd_l2(schedule: optax.ScalarOrSchedule, momentum: float, weight_decay: float):
    """torch.optim.SGD(momentum, weight_decay): wd * param added to the gradient before momentum."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum))


def finetune_optimizer(schedule: optax.Schedule, weight_decay: float, backbone_lr_mult: float):
    """Adam with L2 decay; the backbone's learning rate is `backbone_lr_mult` x the classifier's."""

    def labels(params):
        return {
            k: jax.tree.map(lambda _, g=("backbone" if k == "backbone" else "head"): g, v)
            for k, v in params.items()
        }

    return optax.multi_transform(
        {
            "backbone": optim.adam_l2(lambda step: backbone_lr_mult * schedule(step), weight_decay),
            "head": optim.adam_l2(schedule, weight_decay),
        },
        labels,
    )


def _loss_and_metrics(logits, labels):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    top1 = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, {"loss": loss, "top1": top1}


def make_train_step(
    apply: Callable,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    frozen: Callable | None = None,
) -> Callable:
    """(state, inputs, labels) -> (state, metrics) for `apply(variables, x, train=True, rngs=...)`.

    frozen: an optional `frozen(frozen_variables, inputs)` run first without gradients (the linear
    probe's backbone, in inference mode); the step then takes `frozen_variables` as a fourth
    argument. The probe on clips and on cached features share this step.
    """

    def step(state: ClassifierState, inputs, labels, frozen_variables=None):
        x = inputs if frozen is None else jax.lax.stop_gradient(frozen(frozen_variables, inputs))
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            logits, updates = apply(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            loss, metrics = _loss_and_metrics(logits, labels)
            return loss, (metrics, updates["batch_stats"])

        grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics["lr"] = schedule(state.step)
        new = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        return new, metrics

    return step


def fit_linear_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    decay_epochs: Sequence[float],
    batch: int,
    seed: int,
    log: Callable | None = None,
) -> tuple[dict, int]:
    """A LinearHead trained on fixed features (N, F) with SGD, epochs of shuffled batches
    (the last partial batch dropped); each epoch is one jitted scan. Single-device and seeded, so
    the result does not depend on the device count. log(epoch, {'loss', 'top1', 'lr'}) per epoch.

    Returns (head variables, steps taken).
    """
    feats = jnp.asarray(features, jnp.float32)
    targets = jnp.asarray(labels, jnp.int32)
    n = len(feats)
    batch = min(batch, n)
    steps_per_epoch = n // batch
    schedule = optim.step_decay_schedule(lr, steps_per_epoch, decay_epochs)
    optimizer = sgd_l2(schedule, momentum, weight_decay)
    head = LinearHead(num_classes)
    state = create_state(head.init(jax.random.key(seed), feats[:1], train=False), optimizer, seed)
    step = make_train_step(head.apply, optimizer, schedule)

    @jax.jit
    def epoch(state, feats, targets, order):
        def body(s, idx):
            return step(s, feats[idx], targets[idx])

        state, metrics = jax.lax.scan(body, state, order)
        return state, jax.tree.map(jnp.mean, metrics)

    rng = np.random.default_rng(seed)
    for e in range(1, epochs + 1):
        order = rng.permutation(n)[: steps_per_epoch * batch].reshape(steps_per_epoch, batch)
        state, metrics = epoch(state, feats, targets, order)
        if log is not None:
            log(e, {k: float(v) for k, v in metrics.items()})
    return {"params": state.params, "batch_stats": state.batch_stats}, epochs * steps_per_epoch


def head_probabilities(num_classes: int, variables: dict, features: np.ndarray) -> np.ndarray:
    """(N, C) softmax of a trained LinearHead (inference-mode BN) on features (N, F)."""
    head = LinearHead(num_classes)
    logits = jax.jit(lambda v, x: head.apply(v, x, train=False))(
        variables, jnp.asarray(features, jnp.float32)
    )
    return np.asarray(jax.nn.softmax(logits))
