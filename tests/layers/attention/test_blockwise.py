"""Block-wise (FlashAttention-2) attention: block plan, forward, custom gradient, no T x T."""

import keras
import numpy as np
import pytest

import vishwam_keras
from test_kernels import cache_positions, left_padding, random_qkv, reference_attention, spans
from vishwam_keras.layers.attention import blockwise

BACKEND = keras.backend.backend()
dot_product_attention = vishwam_keras.ops.dot_product_attention


# --- the static block plan ----------------------------------------------------------------


def test_plan_sliding_window_costs_t_times_window():
    length, window, block = 16384, 1024, 512
    plan = blockwise.plan_blocks(
        length, length, causal=True, sliding_window=window, block_size_q=block, block_size_kv=block
    )
    # Each query block sees at most ceil(window / block) + 1 key blocks.
    assert plan.visited_pairs <= length * (window + block)
    assert plan.visited_pairs < 0.1 * length * length


def test_plan_causal_skips_the_upper_triangle():
    plan = blockwise.plan_blocks(4096, 4096, causal=True, block_size_q=512, block_size_kv=512)
    assert plan.visited_pairs == 512 * 512 * (8 * 9 // 2)
    # Only the diagonal pairs build a mask; the pairs below it are entirely visible.
    assert sorted(plan.masked_pairs) == [(i, i) for i in range(8)]
    assert len(plan.full_pairs) == 8 * 7 // 2


def test_plan_general_positions_and_spans_visit_every_block():
    general = blockwise.plan_blocks(
        100, 300, causal=True, static_positions=False, block_size_q=32, block_size_kv=64
    )
    assert general.visited_pairs == general.padded_q_len * general.padded_kv_len
    with_spans = blockwise.plan_blocks(256, 256, causal=True, sliding_window=8, has_spans=True,
                                       block_size_q=64, block_size_kv=64)
    assert with_spans.visited_pairs == 256 * 256


def test_plan_decode_visits_only_the_window():
    plan = blockwise.plan_blocks(
        1, 4096, causal=True, sliding_window=300, block_size_q=512, block_size_kv=256
    )
    assert sorted(plan.full_pairs + plan.masked_pairs) == [(0, 14), (0, 15)]
    assert plan.block_size_q == 8 and plan.padded_q_len == 8


def test_plan_pads_lengths_not_divisible_by_blocks():
    plan = blockwise.plan_blocks(37, 37, causal=True, block_size_q=8, block_size_kv=16)
    assert (plan.padded_q_len, plan.padded_kv_len) == (40, 48)
    assert (4, 2) in plan.masked_pairs  # the padded keys are masked
    assert plan.full_pairs == ((2, 0), (3, 0), (4, 0), (4, 1))


# --- forward ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block_sizes", [(4, 8), (16, 8), (5, 12), (512, 512)]
)
def test_forward_block_sizes_and_ragged_lengths(block_sizes):
    q, k, v = random_qkv(q_len=37, num_heads=4, num_kv_heads=2)
    kwargs = dict(sliding_window=11, padding_mask=left_padding(2, 37, [3, 0]), logit_soft_cap=4.0)
    out = dot_product_attention(
        q, k, v, implementation="blockwise",
        block_size_q=block_sizes[0], block_size_kv=block_sizes[1], **kwargs,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out), reference_attention(q, k, v, **kwargs), atol=2e-5, rtol=1e-4
    )


def test_forward_more_queries_than_keys_masks_rows_without_keys():
    q, k, v = random_qkv(q_len=12, kv_len=8)
    out = dot_product_attention(q, k, v, implementation="blockwise", block_size_q=4, block_size_kv=4)
    expected = reference_attention(q, k, v)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, atol=2e-5, rtol=1e-4)
    assert np.all(keras.ops.convert_to_numpy(out)[:, :4] == 0)


# --- gradients: the custom backward against autodiff of the xla path -------------------------


def gradients(function, q, k, v, compiled=True):
    """d sum(function(q, k, v) * weights) / d(q, k, v) with the backend's autodiff.

    JAX: `jit(grad)` always; TensorFlow: eager `GradientTape`, or inside `tf.function`
    with `compiled=True`.
    """
    weights = np.random.default_rng(7).normal(size=q.shape[:3] + (v.shape[-1],)).astype("float32")

    def loss(q, k, v):
        return keras.ops.sum(keras.ops.multiply(function(q, k, v), weights))

    if BACKEND == "jax":
        import jax

        return [np.asarray(g) for g in jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def grads(q, k, v):
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                value = loss(q, k, v)
            return tape.gradient(value, [q, k, v])

        if compiled:
            grads = tf.function(grads)
        return [g.numpy() for g in grads(tf.constant(q), tf.constant(k), tf.constant(v))]
    if BACKEND == "torch":
        import torch

        tensors = [torch.tensor(t, requires_grad=True) for t in (q, k, v)]
        loss(*tensors).backward()
        return [t.grad.numpy() for t in tensors]
    pytest.skip(f"no gradient helper for backend {BACKEND}")


GRADIENT_CASES = {
    "gqa2_window_cap": (dict(num_heads=4, num_kv_heads=2), dict(sliding_window=5, logit_soft_cap=2.0)),
    "mqa_padding": (
        dict(num_heads=4, num_kv_heads=1), dict(padding_mask=left_padding(2, 13, [6, 0]))
    ),
    "gqa4_spans": (
        dict(num_heads=8, num_kv_heads=2), dict(query_span_ids=spans(2, 13, [(4, 9, 1)]))
    ),
    "mha_bidirectional": (dict(num_heads=2, num_kv_heads=2), dict(causal=False, sliding_window=4)),
    "cache_slots": (
        dict(q_len=3, kv_len=16),
        dict(query_positions=np.array([7, 8, 9], "int32"), key_positions=cache_positions(2, 16, 10)),
    ),
}


@pytest.mark.skipif(BACKEND not in ("jax", "tensorflow", "torch"), reason="autodiff helper")
@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradients_match_xla(case):
    qkv_kwargs, kwargs = GRADIENT_CASES[case]
    q, k, v = random_qkv(**qkv_kwargs)

    def attend(implementation, **extra):
        return lambda q, k, v: dot_product_attention(
            q, k, v, implementation=implementation, **kwargs, **extra
        )

    expected = gradients(attend("xla"), q, k, v, compiled=False)
    got = gradients(attend("blockwise", block_size_q=4, block_size_kv=8), q, k, v, compiled=False)
    for name, g, e in zip("qkv", got, expected):
        np.testing.assert_allclose(g, e, atol=5e-5, rtol=1e-4, err_msg=f"d/d{name}")


@pytest.mark.skipif(BACKEND not in ("jax", "tensorflow"), reason="compiled autodiff")
def test_gradients_match_xla_compiled():
    """Inside `jit` / `tf.function`: the custom gradient of the loops in graph mode."""
    q, k, v = random_qkv(q_len=19, num_heads=4, num_kv_heads=2)
    kwargs = dict(sliding_window=7, logit_soft_cap=3.0, padding_mask=left_padding(2, 19, [4, 0]))

    def attend(implementation, **extra):
        return lambda q, k, v: dot_product_attention(
            q, k, v, implementation=implementation, **kwargs, **extra
        )

    expected = gradients(attend("xla"), q, k, v, compiled=False)
    got = gradients(attend("blockwise", block_size_q=8, block_size_kv=8), q, k, v)
    for name, g, e in zip("qkv", got, expected):
        np.testing.assert_allclose(g, e, atol=5e-5, rtol=1e-4, err_msg=f"d/d{name}")


# --- memory: nothing T x T in the forward or the backward ----------------------------------------


def _all_shapes(jaxpr):
    """Every intermediate shape in a jaxpr, sub-jaxprs (jit, custom_vjp, loops) included."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for param in eqn.params.values():
            params = param if isinstance(param, (list, tuple)) else [param]
            for sub in params:
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _all_shapes(sub)


@pytest.mark.skipif(BACKEND != "jax", reason="inspects the JAX program")
def test_no_t_by_t_tensor_in_forward_or_backward():
    import jax

    length = 384
    q, k, v = random_qkv(batch=1, q_len=length, num_heads=2, num_kv_heads=1)

    def loss(implementation):
        def f(q, k, v):
            out = dot_product_attention(
                q, k, v, implementation=implementation, sliding_window=100,
                block_size_q=64, block_size_kv=64,
            )
            return out.sum()

        return jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(q, k, v).jaxpr

    def largest(jaxpr):
        return max(int(np.prod(s)) for s in _all_shapes(jaxpr))

    # The dense path holds (heads, T, T) scores; the block-wise one at most T x block.
    assert largest(loss("xla")) >= 2 * length * length
    assert largest(loss("blockwise")) <= 2 * length * 64 * 2


@pytest.mark.skipif(BACKEND != "jax", reason="jit")
def test_inside_jit_matches_eager():
    import jax

    q, k, v = random_qkv(q_len=21)
    kwargs = dict(sliding_window=6, block_size_q=8, block_size_kv=8, implementation="blockwise")
    eager = dot_product_attention(q, k, v, **kwargs)
    jitted = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, **kwargs))(q, k, v)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
def test_inside_tf_function_matches_eager():
    import tensorflow as tf

    q, k, v = random_qkv(q_len=21)
    kwargs = dict(sliding_window=6, block_size_q=8, block_size_kv=8, implementation="blockwise")
    eager = dot_product_attention(q, k, v, **kwargs)
    graph = tf.function(lambda q, k, v: dot_product_attention(q, k, v, **kwargs))(q, k, v)
    np.testing.assert_allclose(graph.numpy(), eager.numpy(), atol=1e-6)
