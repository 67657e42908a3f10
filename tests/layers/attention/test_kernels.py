"""The attention dispatch point: every implementation against an independent NumPy reference."""

import keras
import numpy as np
import pytest

import vishwam_keras
from vishwam_keras.layers.attention import kernels

BACKEND = keras.backend.backend()
dot_product_attention = vishwam_keras.ops.dot_product_attention


def reference_attention(
    q, k, v, *, causal=True, sliding_window=None, logit_soft_cap=None, padding_mask=None,
    query_positions=None, key_positions=None, query_span_ids=None, key_span_ids=None,
    scale=None,
):
    """Softmax attention in float64 NumPy, one (example, head) at a time, mask from its rule.

    q `(B, Tq, N, H)`, k/v `(B, Tk, K, H)`; head `h` uses key/value head `h // (N // K)`.
    A query at position i sees a valid key (position j >= 0, not padding) when
    (j <= i if causal) and (i - j < window if windowed), or both share a span id > 0.
    Rows that see nothing are zeros.
    """
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    if query_positions is None:
        query_positions = np.arange(kv_len - q_len, kv_len)
    if key_positions is None:
        key_positions = np.arange(kv_len)
    query_positions = np.broadcast_to(query_positions, (batch, q_len))
    key_positions = np.broadcast_to(key_positions, (batch, kv_len))
    if query_span_ids is not None and key_span_ids is None:
        key_span_ids = query_span_ids
    out = np.zeros((batch, q_len, num_heads, v.shape[-1]))
    for b in range(batch):
        i = query_positions[b][:, None]
        j = key_positions[b][None, :]
        ordered = np.ones((q_len, kv_len), bool)
        if causal:
            ordered &= j <= i
        if sliding_window is not None:
            ordered &= (i - j) < sliding_window
        if query_span_ids is not None:
            qs = np.asarray(query_span_ids)[b][:, None]
            ks = np.asarray(key_span_ids)[b][None, :]
            ordered |= (qs == ks) & (qs > 0)
        allowed = ordered & (j >= 0)
        if padding_mask is not None:
            allowed &= np.asarray(padding_mask, bool)[b][None, :]
        for h in range(num_heads):
            kv_head = h // (num_heads // num_kv_heads)
            scores = q[b, :, h] @ k[b, :, kv_head].T * scale
            if logit_soft_cap is not None:
                scores = logit_soft_cap * np.tanh(scores / logit_soft_cap)
            for row in range(q_len):
                seen = allowed[row]
                if not seen.any():
                    continue
                weights = np.exp(scores[row, seen] - scores[row, seen].max())
                out[b, row, h] = weights / weights.sum() @ v[b, seen, kv_head]
    return out


def random_qkv(batch=2, q_len=13, kv_len=None, num_heads=4, num_kv_heads=2, head_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    kv_len = q_len if kv_len is None else kv_len
    q = rng.normal(size=(batch, q_len, num_heads, head_dim)).astype("float32")
    k = rng.normal(size=(batch, kv_len, num_kv_heads, head_dim)).astype("float32")
    v = rng.normal(size=(batch, kv_len, num_kv_heads, head_dim)).astype("float32")
    return q, k, v


def left_padding(batch, length, pads):
    mask = np.ones((batch, length), bool)
    for b, pad in enumerate(pads):
        mask[b, :pad] = False
    return mask


def spans(batch, length, ranges):
    """`ranges`: list of (start, stop, id) per example, applied to every example."""
    ids = np.zeros((batch, length), "int32")
    for start, stop, span_id in ranges:
        ids[:, start:stop] = span_id
    return ids


def cache_positions(batch, kv_len, filled):
    """A cache of `kv_len` slots with `filled` positions written, the rest empty (-1)."""
    positions = np.full((batch, kv_len), -1, "int32")
    positions[:, :filled] = np.arange(filled)
    return positions


# name -> (qkv kwargs, attention kwargs): the mask features, one or two per case.
CASES = {
    "mha": (dict(num_heads=4, num_kv_heads=4), {}),
    "gqa2_window": (dict(num_heads=4, num_kv_heads=2), dict(sliding_window=4)),
    "gqa4_cap": (dict(num_heads=8, num_kv_heads=2), dict(logit_soft_cap=2.0)),
    "mqa_window_longer_than_sequence": (
        dict(num_heads=4, num_kv_heads=1), dict(sliding_window=64)
    ),
    "padding_fully_masked_rows": (dict(), dict(padding_mask=left_padding(2, 13, [5, 0]))),
    "window_padding_cap": (
        dict(), dict(sliding_window=3, logit_soft_cap=1.5, padding_mask=left_padding(2, 13, [0, 4]))
    ),
    "spans": (dict(), dict(query_span_ids=spans(2, 13, [(3, 7, 1), (9, 12, 2)]))),
    "spans_window_padding": (
        dict(),
        dict(
            sliding_window=2,
            query_span_ids=spans(2, 13, [(2, 8, 1)]),
            padding_mask=left_padding(2, 13, [1, 0]),
        ),
    ),
    "bidirectional": (dict(), dict(causal=False)),
    "bidirectional_window": (dict(), dict(causal=False, sliding_window=3)),
    "decode_cache_slots": (
        dict(q_len=1, kv_len=16),
        dict(query_positions=np.array([[9], [9]], "int32"), key_positions=cache_positions(2, 16, 10)),
    ),
    "chunk_cache_slots_window": (
        dict(q_len=3, kv_len=16),
        dict(
            sliding_window=4,
            query_positions=np.array([7, 8, 9], "int32"),
            key_positions=cache_positions(2, 16, 10),
        ),
    ),
    "chunk_default_positions": (dict(q_len=5, kv_len=13), dict(sliding_window=6)),
    "scale": (dict(), dict(scale=0.1)),
}


@pytest.mark.parametrize("implementation", ["xla", "blockwise", "torch_sdpa"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_reference(case, implementation):
    if implementation == "torch_sdpa" and BACKEND != "torch":
        pytest.skip("torch's fused attention runs under the torch backend only")
    qkv_kwargs, kwargs = CASES[case]
    q, k, v = random_qkv(**qkv_kwargs)
    expected = reference_attention(q, k, v, **kwargs)
    extra = dict(block_size_q=4, block_size_kv=8) if implementation == "blockwise" else {}
    out = dot_product_attention(q, k, v, implementation=implementation, **kwargs, **extra)
    if implementation == "torch_sdpa" and "logit_soft_cap" in kwargs:
        assert kernels.last_attention_implementation() != "torch_sdpa"  # no soft cap there
    else:
        assert kernels.last_attention_implementation() == implementation
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, atol=2e-5, rtol=1e-4)


def test_blockwise_bfloat16_close_to_reference():
    q, k, v = random_qkv(q_len=20)
    expected = reference_attention(q, k, v, sliding_window=6)
    args = [keras.ops.cast(t, "bfloat16") for t in (q, k, v)]
    out = dot_product_attention(
        *args, sliding_window=6, implementation="blockwise", block_size_q=8, block_size_kv=8
    )
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    out = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    np.testing.assert_allclose(out, expected, atol=5e-2)


def test_automatic_choice_and_record():
    short = "torch_sdpa" if BACKEND == "torch" else "xla"
    small = np.zeros((1, 16, 2, 8), "float32")
    dot_product_attention(small, small, small)
    assert kernels.last_attention_implementation() == short
    dot_product_attention(small, small, small, logit_soft_cap=5.0)
    assert kernels.last_attention_implementation() == "xla"
    long_q, long_k = np.zeros((1, 2048, 1, 8), "float32"), np.zeros((1, 2048, 1, 8), "float32")
    mask = kernels.masks_lib.AttentionMask(None, None, causal=True)
    choice = kernels.choose_implementation(long_q, long_k, mask, static_positions=True)
    expected = {"cpu": "blockwise", "gpu": "blockwise", "tpu": "splash", None: "blockwise"}
    assert choice == expected[kernels._jax_platform()]
    windowed = kernels.masks_lib.AttentionMask(None, None, sliding_window=128)
    q1024 = np.zeros((1, 1024, 1, 8), "float32")
    assert kernels.choose_implementation(q1024, q1024, windowed) == "blockwise"
    decode = np.zeros((1, 1, 1, 8), "float32")
    assert kernels.choose_implementation(decode, long_k, mask) == short


def test_attention_logging(caplog):
    q, k, v = random_qkv()
    kernels.set_attention_logging(True)
    try:
        with caplog.at_level("INFO", logger="vishwam_keras.attention"):
            dot_product_attention(q, k, v, implementation="blockwise")
    finally:
        kernels.set_attention_logging(False)
    assert "attention implementation: blockwise" in caplog.text


# --- splash (Pallas, interpret mode on CPU) ------------------------------------------

needs_jax = pytest.mark.skipif(BACKEND != "jax", reason="splash and cuDNN are JAX kernels")

SPLASH_CASES = {
    "causal_gqa_padding": (
        dict(q_len=130, num_heads=4, num_kv_heads=2),
        dict(padding_mask=left_padding(2, 130, [7, 0])),
    ),
    "window_mqa_cap": (
        dict(q_len=100, num_heads=2, num_kv_heads=1, batch=1),
        dict(sliding_window=9, logit_soft_cap=2.0),
    ),
}


@needs_jax
@pytest.mark.parametrize("case", sorted(SPLASH_CASES))
def test_splash_interpret_matches_reference(case):
    qkv_kwargs, kwargs = SPLASH_CASES[case]
    q, k, v = random_qkv(**qkv_kwargs)
    expected = reference_attention(q, k, v, **kwargs)
    out = dot_product_attention(q, k, v, implementation="splash", interpret=True, **kwargs)
    assert kernels.last_attention_implementation() == "splash"
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=1e-4)


@needs_jax
@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(query_span_ids=spans(2, 60, [(10, 30, 1)]), padding_mask=left_padding(2, 60, [0, 3])),
        dict(causal=False, sliding_window=5),
        dict(sliding_window=70, padding_mask=left_padding(2, 60, [12, 0])),
    ],
)
def test_splash_interpret_more_masks(kwargs):
    q, k, v = random_qkv(q_len=60, num_heads=8, num_kv_heads=2)
    expected = reference_attention(q, k, v, **kwargs)
    out = dot_product_attention(q, k, v, implementation="splash", interpret=True, **kwargs)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's fused attention: torch backend only")
def test_torch_sdpa_gradients_and_bfloat16_match_xla():
    import torch

    q, k, v = random_qkv(q_len=13, num_heads=4, num_kv_heads=2)
    padding = left_padding(2, 13, [5, 0])  # the first rows of example 0 are fully masked
    weights = torch.as_tensor(np.random.default_rng(1).normal(size=q.shape).astype("float32"))

    def grads(implementation):
        tensors = [torch.tensor(t, requires_grad=True) for t in (q, k, v)]
        out = dot_product_attention(
            *tensors, sliding_window=4, padding_mask=padding, implementation=implementation
        )
        assert kernels.last_attention_implementation() == implementation
        (out * weights).sum().backward()
        return [t.grad.numpy() for t in tensors]

    for ours, reference in zip(grads("torch_sdpa"), grads("xla")):
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=1e-4)
    expected = reference_attention(q, k, v, sliding_window=4, padding_mask=padding)
    args = [keras.ops.cast(t, "bfloat16") for t in (q, k, v)]
    out = dot_product_attention(*args, sliding_window=4, padding_mask=padding, implementation="torch_sdpa")
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), expected, atol=5e-2)


@needs_jax
@pytest.mark.slow
def test_splash_interpret_gradients_match_xla():
    import jax

    q, k, v = random_qkv(q_len=40, num_heads=4, num_kv_heads=2)
    padding = left_padding(2, 40, [5, 0])
    weights = np.random.default_rng(1).normal(size=q.shape).astype("float32")

    def loss(implementation):
        def f(q, k, v):
            out = dot_product_attention(
                q, k, v, sliding_window=7, padding_mask=padding, logit_soft_cap=3.0,
                implementation=implementation, interpret=True,
            )
            return (out * weights).sum()

        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))

    for got, want in zip(loss("splash")(q, k, v), loss("xla")(q, k, v)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=5e-5, rtol=1e-4)


@needs_jax
def test_splash_falls_back_for_general_positions():
    q, k, v = random_qkv(q_len=3, kv_len=16)
    kwargs = dict(query_positions=np.array([7, 8, 9], "int32"), key_positions=cache_positions(2, 16, 10))
    out = dot_product_attention(q, k, v, implementation="splash", interpret=True, **kwargs)
    assert kernels.last_attention_implementation() == "blockwise"
    np.testing.assert_allclose(
        np.asarray(out), reference_attention(q, k, v, **kwargs), atol=2e-5, rtol=1e-4
    )


# --- cuDNN -----------------------------------------------------------------------------


@needs_jax
@pytest.mark.parametrize("kwargs", [dict(), dict(sliding_window=4), dict(causal=False)])
def test_cudnn_argument_mapping_through_xla(kwargs):
    """The jax.nn call cuDNN receives, run by XLA on any device: mask semantics match ours."""
    q, k, v = random_qkv(q_len=12, num_heads=4, num_kv_heads=2)
    mask = kernels.masks_lib.AttentionMask(
        None, None, causal=kwargs.get("causal", True), sliding_window=kwargs.get("sliding_window")
    )
    out = kernels.cudnn_attention(q, k, v, mask, jax_implementation="xla")
    np.testing.assert_allclose(
        np.asarray(out), reference_attention(q, k, v, **kwargs), atol=2e-5, rtol=1e-4
    )


@pytest.mark.skipif(
    BACKEND != "jax" or kernels._jax_platform() != "gpu", reason="cuDNN needs JAX on a GPU"
)
def test_cudnn_on_gpu_matches_reference():
    q, k, v = random_qkv(q_len=256, num_heads=8, num_kv_heads=2, head_dim=64)
    expected = reference_attention(q, k, v, sliding_window=100)
    args = [keras.ops.cast(t, "bfloat16") for t in (q, k, v)]
    out = dot_product_attention(*args, sliding_window=100, implementation="cudnn")
    assert kernels.last_attention_implementation() == "cudnn"
    out = np.asarray(keras.ops.cast(out, "float32"))
    np.testing.assert_allclose(out, expected, atol=3e-2)


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((1, 4, 3, 8), (1, 4, 2, 8)), {}, "key/value heads must divide"),
        (((1, 4, 2, 8), (1, 4, 2, 4)), {}, "head_dim"),
        (((1, 4, 2, 8), (1, 4, 2, 8)), dict(sliding_window=0), "sliding_window"),
        (((1, 4, 2, 8), (1, 4, 2, 8)), dict(sliding_window=-3), "sliding_window"),
        (((1, 4, 2, 8), (1, 4, 2, 8)), dict(implementation="flash9"), "implementation"),
        (((1, 4, 2, 8), (1, 4, 2, 8)), dict(block_size_kv=0), "block_size_kv"),
        (((1, 4, 2, 8), (1, 4, 2, 8)), dict(logit_soft_cap=-1.0), "logit_soft_cap"),
    ],
)
def test_bad_arguments_raise(shapes, kwargs, match):
    q = np.zeros(shapes[0], "float32")
    k = np.zeros(shapes[1], "float32")
    with pytest.raises(ValueError, match=match):
        dot_product_attention(q, k, k, **kwargs)


def test_forced_kernel_the_device_cannot_run_raises():
    q = np.zeros((1, 4, 2, 8), "float32")
    if BACKEND != "torch":
        with pytest.raises(ValueError, match="implementation='torch_sdpa'.*torch backend"):
            dot_product_attention(q, q, q, implementation="torch_sdpa")
    if BACKEND != "jax":
        with pytest.raises(ValueError, match="implementation='splash'.*JAX backend"):
            dot_product_attention(q, q, q, implementation="splash")
        with pytest.raises(ValueError, match="implementation='cudnn'.*JAX backend"):
            dot_product_attention(q, q, q, implementation="cudnn")
        return
    platform = kernels._jax_platform()
    if platform != "tpu":
        with pytest.raises(ValueError, match="implementation='splash'.*TPU.*interpret=True"):
            dot_product_attention(q, q, q, implementation="splash")
    if platform != "gpu":
        with pytest.raises(ValueError, match="implementation='cudnn'.*GPU"):
            dot_product_attention(q, q, q, implementation="cudnn")
