"""S3D against torchvision outputs (stored fixture), parameter count, variants and conversion."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

from cvtcl_jax.models import (
    S3D,
    ContrastiveEncoder,
    ProjectionHead,
    conv,
    load_torchvision_s3d,
    pooling,
    to_torchvision_s3d,
    variable_shapes,
)
from cvtcl_jax.models.s3d import feature_map_size
from tests.s3d_reference import CASES, random_torchvision_state, reference_input
from tests.tiny import SMALLEST

# The real-size case compiles the whole network at 32x128x128: the full suite only.
TIERED_CASES = [
    pytest.param(c, id=c[0], marks=[pytest.mark.slow] if c[0] == "full_32x128" else []) for c in CASES
]
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "s3d_torchvision.npz")


@pytest.fixture(scope="module")
def fixture():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def torchvision_state():
    return random_torchvision_state(CASES[0][1])


def rel_err(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("case", TIERED_CASES)
def test_matches_torchvision_in_inference_mode(case, fixture, torchvision_state):
    name, _, xseed, shape = case
    variables = load_torchvision_s3d(torchvision_state)
    y = jax.jit(lambda v, x: S3D().apply(v, x, train=False))(variables, reference_input(xseed, shape))
    assert y.shape == (shape[0], 1024)
    assert rel_err(y, fixture[f"{name}/eval"]) < 1e-4


@pytest.mark.parametrize("case", TIERED_CASES)
def test_matches_torchvision_in_training_mode_bn(case, fixture, torchvision_state):
    """Batch-statistics BN and the running-statistics update (unbiased variance), in float64.

    Train-mode BN over a few samples amplifies float32 rounding layer by layer; torch float32
    itself drifts up to 4e-3 from its float64 result here (see make_s3d_fixture.py).
    """
    name, _, xseed, shape = case
    variables = load_torchvision_s3d(torchvision_state)
    with jax.enable_x64(True):
        x = jnp.asarray(reference_input(xseed, shape), jnp.float64)
        y, updates = jax.jit(
            lambda v, x: S3D(dtype=jnp.float64).apply(v, x, train=True, mutable=["batch_stats"])
        )(variables, x)
        assert rel_err(y, fixture[f"{name}/train"]) < 1e-4
        new = to_torchvision_s3d({"params": variables["params"], **updates})
        for key in ("features.0.0.1.running_var", "features.15.branch3.1.1.running_mean"):
            assert rel_err(new[key], fixture[f"{name}/stats/{key}"]) < 1e-4
        worst = max(rel_err(new[k], fixture[f"{name}/stats/{k}"]) for k in new if "running" in k)
        assert worst < 1e-4


def test_full_network_size_and_feature_map():
    shapes = jax.eval_shape(
        lambda: S3D().init(jax.random.key(0), jnp.zeros((1, 32, 128, 128, 3)), train=False)
    )
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert n_params == 7_910_048
    assert S3D().out_features == 1024
    fmap = jax.eval_shape(lambda v: S3D().apply(v, jnp.zeros((1, 32, 128, 128, 3)), return_map=True), shapes)
    assert fmap.shape == (1, 4, 4, 4, 1024)
    assert feature_map_size(32, 128, 128) == (4, 4, 4)


@pytest.mark.slow
def test_small_variant_and_bfloat16_compute():
    model = S3D(width_multiplier=0.125, **SMALLEST, dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 32, 32, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    y = jax.jit(model.apply)(variables, x)
    assert y.shape == (2, model.out_features) == (2, 104)  # Mixed_5b's 832 channels at 1/8
    assert y.dtype == jnp.float32
    y32 = jax.jit(S3D(width_multiplier=0.125, **SMALLEST).apply)(variables, x)
    assert rel_err(y, np.asarray(y32)) < 0.05


@pytest.mark.slow
def test_remat_keeps_variables_outputs_and_gradients():
    """remat only changes what the backward pass stores: same variable tree, features, BN updates
    and gradients as without it (float64, training-mode BN), and the backward pass recomputes."""
    with jax.enable_x64(True):
        kw = dict(
            width_multiplier=0.125, **SMALLEST, bn_group_size=2, dtype=jnp.float64, param_dtype=jnp.float64
        )
        plain, remat = S3D(**kw), S3D(**kw, remat=True)
        x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 8, 32, 32, 3)), jnp.float64)
        variables = jax.jit(plain.init)(jax.random.key(0), x)
        assert jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), x)) == jax.tree.structure(
            variables
        )

        def loss_and_grad(model):
            def loss(params):
                y, upd = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
                return jnp.sum(jnp.sin(y)), upd

            return jax.jit(jax.value_and_grad(loss, has_aux=True))

        (l0, upd0), g0 = loss_and_grad(plain)(variables["params"])
        (l1, upd1), g1 = loss_and_grad(remat)(variables["params"])
        np.testing.assert_allclose(l1, l0, rtol=1e-12)
        # Float64 throughout (float32 parameters would round the float64 gradients to float32,
        # where another summation order flips the last bit); atol 1e-10 against gradients of order
        # 1-30, since an element can be a near-cancelling sum of much larger terms.
        for a, b in ((g0, g1), (upd0, upd1)):
            jax.tree.map(lambda u, v: np.testing.assert_allclose(v, u, rtol=1e-9, atol=1e-10), a, b)

        def grad_convolutions(model):
            def feature_sum(params):
                y, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
                return jnp.sum(y)

            jaxpr = str(jax.make_jaxpr(jax.grad(feature_sum))(variables["params"]))
            return jaxpr.count("conv_general") + jaxpr.count("dot_general")  # 1x1x1 convs are matmuls

        # The forward pass's convolutions run again in the backward pass: the stem's two, conv_2b's,
        # conv_2c's two and eight in each of the three Mixed blocks.
        assert grad_convolutions(remat) == grad_convolutions(plain) + 29


@pytest.mark.parametrize(
    "kernel, strides",
    [
        ((1, 7, 7), (1, 2, 2)),
        ((7, 1, 1), (2, 1, 1)),
        ((1, 3, 3), (1, 1, 1)),
        ((3, 1, 1), (1, 1, 1)),
        ((1, 1, 1), (1, 1, 1)),
        ((3, 3, 3), (1, 2, 2)),
        ((1, 3, 3), (2, 2, 1)),
        ((3, 1, 1), (1, 2, 3)),
        ((1, 1, 1), (2, 2, 3)),
    ],
    ids=[
        "stem-spatial",
        "stem-temporal",
        "spatial",
        "temporal",
        "pointwise",
        "full-3d",
        "spatial-strided-time",
        "temporal-strided-space",
        "pointwise-strided",
    ],
)
def test_folded_conv_is_the_3d_conv(kernel, strides):
    """Each kernel S3D uses (and a full 3D one, which falls back to a 3D conv), on odd sizes:
    the folded lowering equals XLA's 3D convolution with PyTorch's padding, values and gradients."""
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((2, 7, 9, 11, 3)), jnp.float64)
        k = jnp.asarray(rng.standard_normal((*kernel, 3, 4)), jnp.float64)
        pad = [(n // 2, n // 2) for n in kernel]
        dims = ("NDHWC", "DHWIO", "NDHWC")

        def ref(x, k):
            return jax.lax.conv_general_dilated(x, k, strides, pad, dimension_numbers=dims)

        y, vjp = jax.vjp(ref, x, k)
        y2, vjp2 = jax.vjp(lambda x, k: conv.conv3d_folded(x, k, strides), x, k)
        np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
        g = jnp.asarray(rng.standard_normal(y.shape), jnp.float64)
        for got, want in zip(vjp2(g), vjp(g), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(32, 32), (9, 11), (5, 6)], ids=["even", "odd", "mixed"])
@pytest.mark.parametrize("window", [(7, 7), (3, 3), (7, 3)], ids=["7x7", "3x3", "7x3"])
def test_space_to_depth_conv_is_the_strided_conv(size, window):
    """conv2d_space_to_depth equals the stride-2 conv with PyTorch's padding, values and gradients."""
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((2, *size, 3)), jnp.float64)
        k = jnp.asarray(rng.standard_normal((*window, 3, 4)), jnp.float64)
        pad = [(n // 2, n // 2) for n in window]

        def ref(x, k):
            return jax.lax.conv_general_dilated(x, k, (2, 2), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))

        y, vjp = jax.vjp(ref, x, k)
        y2, vjp2 = jax.vjp(conv.conv2d_space_to_depth, x, k)
        np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
        g = jnp.asarray(rng.standard_normal(y.shape), jnp.float64)
        for got, want in zip(vjp2(g), vjp(g), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_conv_lowerings_give_the_same_network():
    """S3D with conv_lowering 'fold', 'fold_s2d' and 'xla3d': same variables, features, BN updates
    and gradients (float64, training-mode BN); 'fold' has no 3D convolution left, 'xla3d' only
    those, and 'fold_s2d' no strided one on the 3-channel input (its stem conv runs at stride 1
    on 12 channels)."""
    with jax.enable_x64(True):
        # One BN group of 4 clips: groups of 2 leave so few values per channel in the last layers
        # that BN's division amplifies summation-order differences to 1e-7.
        kw = dict(width_multiplier=0.125, **SMALLEST, dtype=jnp.float64, param_dtype=jnp.float64)
        fold, xla3d = S3D(**kw, conv_lowering="fold"), S3D(**kw, conv_lowering="xla3d")
        fold_s2d = S3D(**kw, conv_lowering="fold_s2d")
        x = jnp.asarray(np.random.default_rng(6).standard_normal((4, 8, 64, 64, 3)), jnp.float64)
        variables = jax.jit(fold.init)(jax.random.key(0), x)
        shapes = jax.eval_shape(xla3d.init, jax.random.key(0), x)
        assert jax.tree.map(lambda v: v.shape, shapes) == jax.tree.map(lambda v: v.shape, variables)

        def run(model):
            def loss(params):
                y, upd = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
                return jnp.sum(jnp.sin(y)), upd

            jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, has_aux=True))(variables["params"])
            ranks = {e.invars[0].aval.ndim for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"}
            # The stem's spatial conv: the only one with 3 input channels, stride 2 unless rewritten.
            forward = jax.make_jaxpr(lambda p: loss(p)[0])(variables["params"])
            stem_strided = any(
                e.invars[0].aval.shape[-1] == 3 and max(e.params["window_strides"]) > 1
                for e in forward.eqns
                if e.primitive.name == "conv_general_dilated"
            )
            return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"]), ranks, stem_strided

        ((l0, upd0), g0), ranks0, _ = run(xla3d)
        assert ranks0 == {5}
        for model in (fold, fold_s2d):
            ((l1, upd1), g1), ranks1, strided = run(model)
            np.testing.assert_allclose(l1, l0, rtol=1e-12)
            for a, b in ((g0, g1), (upd0, upd1)):
                jax.tree.map(lambda u, v: np.testing.assert_allclose(v, u, rtol=1e-9, atol=1e-12), a, b)
            assert ranks1 == {4}
            assert strided == (model.conv_lowering == "fold"), model.conv_lowering


@pytest.mark.parametrize(
    "window, strides, pad",
    [
        pytest.param((3, 3, 3), (1, 1, 1), (1, 1, 1), marks=pytest.mark.slow),
        ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        pytest.param((3, 3, 3), (2, 2, 2), (1, 1, 1), marks=pytest.mark.slow),
        ((2, 2, 2), (2, 2, 2), (0, 0, 0)),
    ],
    ids=["mixed-branch3", "stem", "pool-4", "pool-5"],
)
def test_pool_grads_give_the_automatic_gradient(window, strides, pad):
    """S3D's four max pools, every pool_grad: same values, and the same gradient as
    SelectAndScatter's, also where a window holds several maxima (ReLU zeros, repeated values):
    the first one in window order gets it."""
    rng = np.random.default_rng(3)
    others = {name: fn for name, fn in pooling.POOL_GRADS.items() if name != "autodiff"}

    def value_and_vjp(fn):
        """Jitted (values, vjp(g)) of one pool: one program, not one per eager operation."""

        def run(v, g):
            y, vjp = jax.vjp(lambda u: fn(u, window, strides, pad), v)
            return y, vjp(g)[0]

        return jax.jit(run)

    with jax.enable_x64(True):
        x = rng.standard_normal((2, 5, 9, 8, 3))
        tied = np.round(np.maximum(x, 0.0) * 2) / 2
        reference = value_and_vjp(pooling.max_pool3d)
        variants = {name: value_and_vjp(fn) for name, fn in others.items()}
        for inputs in (x, tied):
            shape = jax.eval_shape(lambda v: pooling.max_pool3d(v, window, strides, pad), inputs).shape
            g = rng.standard_normal(shape)
            y, grad = reference(inputs, g)
            for name, run in variants.items():
                y2, grad2 = run(inputs, g)
                np.testing.assert_array_equal(y2, y, err_msg=name)
                np.testing.assert_allclose(grad2, grad, rtol=1e-12, atol=1e-12, err_msg=name)
        assert np.sum(tied == 0) > 0 and np.sum(tied == 0.5) > 1
    low = jnp.asarray(rng.standard_normal((2, 5, 9, 8, 3)), jnp.bfloat16)  # a maximum is exact
    pool = functools.partial(jax.jit, static_argnums=(1, 2, 3))
    want = pool(pooling.max_pool3d)(low, window, strides, pad)
    for name, fn in others.items():
        np.testing.assert_array_equal(pool(fn)(low, window, strides, pad), want, err_msg=name)


def test_separable_pool_runs_one_axis_at_a_time():
    """The separable pools' stages are 1D (one window of 3 per axis for 3x3x3), and the stem's
    (1, 3, 3) pool has no stage along T."""
    assert pooling.axis_stages((3, 3, 3), (2, 2, 2), (1, 1, 1)) == [
        ((1, 1, 3), (1, 1, 2), (0, 0, 1)),
        ((1, 3, 1), (1, 2, 1), (0, 1, 0)),
        ((3, 1, 1), (2, 1, 1), (1, 0, 0)),
    ]
    assert [w for w, _, _ in pooling.axis_stages((1, 3, 3), (1, 2, 2), (0, 1, 1))] == [(1, 1, 3), (1, 3, 1)]
    x = jnp.zeros((1, 4, 6, 6, 2))
    jaxpr = jax.make_jaxpr(lambda v: pooling.max_pool3d_separable(v, (3, 3, 3), (1, 1, 1), (1, 1, 1)))(x)
    text = str(jaxpr)
    assert "window_dimensions=(1, 1, 1, 3, 1)" in text and "window_dimensions=(1, 3, 1, 1, 1)" in text
    assert "window_dimensions=(1, 3, 3, 3, 1)" not in text


@pytest.mark.slow
def test_pool_grads_give_the_same_network():
    """S3D with every pool_grad: same loss, gradients and BN updates as 'autodiff' (float64,
    training-mode BN, ReLU zeros as ties); the slices variants leave no reduce-window in the
    program."""
    with jax.enable_x64(True):
        kw = dict(width_multiplier=0.125, **SMALLEST, dtype=jnp.float64, param_dtype=jnp.float64)
        x = jnp.asarray(np.random.default_rng(7).standard_normal((4, 8, 32, 32, 3)), jnp.float64)
        variables = jax.jit(S3D(**kw).init)(jax.random.key(0), x)

        def run(pool_grad):
            model = S3D(**kw, pool_grad=pool_grad)

            def loss(params):
                y, upd = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
                return jnp.sum(jnp.sin(y)), upd

            grad_fn = jax.value_and_grad(loss, has_aux=True)
            names = _primitive_names(jax.make_jaxpr(grad_fn)(variables["params"]).jaxpr)
            return jax.jit(grad_fn)(variables["params"]), names

        ((l0, upd0), g0), names0 = run("autodiff")
        assert "reduce_window_max" in names0
        for pool_grad in sorted(set(pooling.POOL_GRADS) - {"autodiff"}):
            ((l1, upd1), g1), names1 = run(pool_grad)
            np.testing.assert_allclose(l1, l0, rtol=1e-12, err_msg=pool_grad)
            for a, b in ((g0, g1), (upd0, upd1)):
                jax.tree.map(lambda u, v: np.testing.assert_allclose(v, u, rtol=1e-9, atol=1e-12), a, b)
            window_ops = any(n.startswith(("reduce_window", "select_and_scatter")) for n in names1)
            assert window_ops == ("slices" not in pool_grad), pool_grad


def _primitive_names(jaxpr) -> set[str]:
    """Names of the primitives in a jaxpr and in the jaxprs nested in it (remat, custom_vjp)."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jaxprs_in_params(eqn.params):
            names |= _primitive_names(sub)
    return names


@pytest.mark.slow
def test_bn_groups_normalise_each_group_alone():
    """With bn_group_size=2, a clip's output depends only on its own group of clips (float64)."""
    with jax.enable_x64(True):
        model = S3D(width_multiplier=0.125, **SMALLEST, bn_group_size=2, dtype=jnp.float64)
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal((4, 8, 32, 32, 3)), jnp.float64)
        variables = jax.jit(model.init)(jax.random.key(0), x)
        apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
        y = apply(variables, x)
        np.testing.assert_allclose(y[:2], apply(variables, x[:2]), rtol=1e-9, atol=1e-12)
        x2 = x.at[2:].set(x[2:] * 3.0 + 1.0)  # changing group 2 leaves group 1 untouched
        np.testing.assert_allclose(apply(variables, x2)[:2], y[:2], rtol=1e-9, atol=1e-12)
        assert not np.allclose(apply(variables, x2)[2:], y[2:])
        with pytest.raises(ValueError, match="bn_group_size"):
            apply(variables, x[:3])


def test_torchvision_round_trip(torchvision_state):
    back = to_torchvision_s3d(load_torchvision_s3d(torchvision_state))
    assert set(back) == set(torchvision_state)
    for key, value in torchvision_state.items():
        np.testing.assert_array_equal(back[key], value)


def test_small_variants_keep_the_first_blocks_of_each_stage():
    """num_mixed_3/4/5 keep the first blocks of each stage; their torchvision state dicts hold
    the same names minus the blocks left out, and convert back."""
    blocks = ("3b", "3c", "4b", "4c", "4d", "4e", "4f", "5b", "5c")
    assert S3D().mixed_blocks == tuple(f"mixed_{b}" for b in blocks)
    assert S3D().is_full and not S3D(num_mixed_5=1).is_full and not S3D(width_multiplier=0.5).is_full
    small = S3D(width_multiplier=0.125, **SMALLEST)
    assert small.mixed_blocks == ("mixed_3b", "mixed_4b", "mixed_5b")
    shapes = variable_shapes(small, (8, 32, 32))
    assert set(shapes["params"]) == {"stem", "conv_2b", "conv_2c", "mixed_3b", "mixed_4b", "mixed_5b"}
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    state = to_torchvision_s3d(variables)
    assert "features.5.branch0.0.weight" in state and "features.6.branch0.0.weight" not in state  # 3b, 3c
    assert "features.14.branch0.0.weight" in state and "features.15.branch0.0.weight" not in state  # 5b, 5c
    jax.tree.map(np.testing.assert_array_equal, load_torchvision_s3d(state), variables)
    for name, value in (("num_mixed_3", 0), ("num_mixed_4", 6), ("num_mixed_5", 3)):
        with pytest.raises(ValueError, match=f"{name} must be in 1..[25], got {value}"):
            S3D(**{name: value}).init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)))


def test_bad_inputs_give_clear_errors(torchvision_state):
    with pytest.raises(ValueError, match="too small"):
        S3D().init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        S3D().init(jax.random.key(0), jnp.zeros((1, 8, 32, 32)))
    broken = dict(torchvision_state)
    del broken["features.5.branch0.0.weight"]
    with pytest.raises(KeyError, match="features.5.branch0.0.weight"):
        load_torchvision_s3d(broken)


def test_projection_head_gives_unit_vectors_and_the_encoder_its_shapes():
    head = ProjectionHead(hidden_dim=32, out_dim=16)
    feats = jnp.asarray(np.random.default_rng(2).standard_normal((5, 128)), jnp.float32)
    z = jax.jit(head.apply)(head.init(jax.random.key(0), feats), feats)
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
    model = ContrastiveEncoder(width_multiplier=0.125, **SMALLEST, head_hidden_dim=32, embed_dim=16)
    x = jax.ShapeDtypeStruct((3, 8, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(variables["params"]) == {"backbone", "head"} and set(variables["batch_stats"]) == {"backbone"}
    feats, z = jax.eval_shape(model.apply, variables, x)
    assert feats.shape == (3, 104) and z.shape == (3, 16)


@pytest.mark.slow
def test_encoder_embeddings_are_unit_vectors():
    model = ContrastiveEncoder(width_multiplier=0.125, **SMALLEST, head_hidden_dim=32, embed_dim=16)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 8, 32, 32, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert set(variables["params"]) == {"backbone", "head"}
    feats, z = jax.jit(model.apply)(variables, x)
    assert feats.shape == (3, 104) and z.shape == (3, 16)
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
