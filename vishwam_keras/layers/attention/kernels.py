"""THE attention dispatch point: one function, several implementations.

Every attention layer calls `dot_product_attention`; this is the only module (with
`distribution.py`) that may look at the backend or the device. Implementations:
`"xla"` (plain einsum softmax with a dense mask, the reference), `"blockwise"`
(FlashAttention-2 in `keras.ops`, any backend), `"splash"` (Pallas splash attention, JAX on
TPU), `"cudnn"` (cuDNN flash attention through `jax.nn.dot_product_attention`, JAX on GPU)
and `"torch_sdpa"` (`torch.nn.functional.scaled_dot_product_attention`, the torch backend's
fused kernels, chosen there instead of `"xla"` when there is no logit soft cap).
"""

import functools
import logging
import os

import keras
import numpy as np
from keras import ops

from vishwam_keras.checks import static_dim
from vishwam_keras.layers.attention import blockwise as blockwise_lib
from vishwam_keras.layers.attention import masks as masks_lib

logger = logging.getLogger("vishwam_keras.attention")

IMPLEMENTATIONS = ("xla", "blockwise", "splash", "cudnn", "torch_sdpa")

# Automatic choice: block-wise once the T x T scores stop being cheap, or when a sliding
# window skips most of them; never for short query chunks (decode), where xla is tiny.
BLOCKWISE_MIN_KV_LEN = 2048
BLOCKWISE_MIN_Q_LEN = 128
BLOCKWISE_WINDOW_RATIO = 4
SPLASH_MIN_Q_LEN = 128
SPLASH_DEFAULT_BLOCK_SIZE = 512
_SPLASH_LANES = 128  # splash block sizes must be multiples of the TPU lane width

_state = {"last": None, "log": os.environ.get("VISHWAM_ATTENTION_LOG", "") not in ("", "0")}


def last_attention_implementation():
    """The implementation chosen by the most recent `dot_product_attention` call.

    Recorded when the call is traced, so under `jit` it names what the compiled
    function runs. `None` before the first call.
    """
    return _state["last"]


def set_attention_logging(enabled=True):
    """Log every implementation choice at INFO level (also: `VISHWAM_ATTENTION_LOG=1`)."""
    _state["log"] = bool(enabled)
    if enabled and not logger.handlers:
        logger.addHandler(logging.StreamHandler())
    if enabled and logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def _record(implementation, reason):
    _state["last"] = implementation
    level = logging.INFO if _state["log"] else logging.DEBUG
    logger.log(
        level, "attention implementation: %s (backend %s; %s)",
        implementation, keras.backend.backend(), reason,
    )


# --- backend and device --------------------------------------------------------------


def _jax_platform():
    """'cpu', 'gpu' or 'tpu' under the JAX backend, else None."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    return jax.default_backend()


def available_implementations():
    """The implementations this backend and device run natively.

    Under JAX, splash also runs anywhere in Pallas interpret mode (`interpret=True`, slow).
    """
    platform = _jax_platform()
    available = ["xla", "blockwise"]
    if keras.backend.backend() == "torch" and _torch_has_gqa_attention():
        available.append("torch_sdpa")
    if platform == "tpu":
        available.append("splash")
    if platform == "gpu":
        available.append("cudnn")
    return tuple(available)


def _concrete_numpy(tensor):
    """A NumPy copy of `tensor` if its value is known now (not traced), else None."""
    if tensor is None:
        return None
    if keras.backend.backend() == "jax":
        import jax

        if isinstance(tensor, jax.core.Tracer):
            return None
    try:
        return np.asarray(ops.convert_to_numpy(tensor))
    except Exception:  # symbolic (tf.function) tensors have no value yet
        return None


def _check_device(implementation, interpret):
    """Raise if this backend/device cannot run `implementation` at all."""
    backend = keras.backend.backend()
    if implementation == "torch_sdpa" and backend != "torch":
        raise ValueError(
            f"`implementation='torch_sdpa'` needs the torch backend; the backend is "
            f"{backend!r}. Available here: {available_implementations()}"
        )
    if implementation in ("splash", "cudnn") and backend != "jax":
        raise ValueError(
            f"`implementation={implementation!r}` needs the JAX backend; the backend is "
            f"{backend!r}. Available here: {available_implementations()}"
        )
    platform = _jax_platform()
    if implementation == "splash" and platform != "tpu" and not interpret:
        raise ValueError(
            "`implementation='splash'` needs a TPU; the JAX platform is "
            f"{platform!r}. Pass `interpret=True` to emulate the kernel (slow, for tests). "
            f"Available here: {available_implementations()}"
        )
    if implementation == "cudnn" and platform != "gpu":
        raise ValueError(
            "`implementation='cudnn'` needs a GPU; the JAX platform is "
            f"{platform!r}. Available here: {available_implementations()}"
        )


# --- what each fast path supports -----------------------------------------------------


def blockwise_supported(query, key):
    if static_dim(query.shape[1]) is None or static_dim(key.shape[1]) is None:
        return False, "block-wise needs static sequence lengths"
    return True, ""


def torch_sdpa_supported(*, logit_soft_cap=None):
    if logit_soft_cap is not None:
        return False, "torch's scaled_dot_product_attention has no logit soft cap"
    if not _torch_has_gqa_attention():
        return False, "torch < 2.5: scaled_dot_product_attention has no enable_gqa"
    return True, ""


@functools.lru_cache(maxsize=1)
def _torch_has_gqa_attention():
    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 5)


def splash_supported(query, key, mask, *, static_positions):
    if static_dim(query.shape[1]) is None or static_dim(key.shape[1]) is None:
        return False, "splash needs static sequence lengths"
    if not static_positions:
        return False, "splash needs the default positions (`query_positions`/`key_positions` unset)"
    if mask.has_spans and (
        _concrete_numpy(mask.query_span_ids) is None or _concrete_numpy(mask.key_span_ids) is None
    ):
        return False, "splash builds span masks statically: `query_span_ids` must not be traced"
    return True, ""


def cudnn_supported(query, key, value, mask, *, logit_soft_cap, static_positions):
    head_dim = query.shape[-1]
    max_head_dim = 128
    try:
        import jax

        capability = getattr(jax.devices()[0], "compute_capability", "0")
        if float(capability) >= 9.0:
            max_head_dim = 256
    except Exception:
        pass
    dtype = keras.backend.standardize_dtype(query.dtype)
    q_len, kv_len = static_dim(query.shape[1]), static_dim(key.shape[1])
    if dtype not in ("float16", "bfloat16"):
        return False, f"cuDNN runs float16/bfloat16 only, got {dtype}"
    if head_dim is None or head_dim % 8 or head_dim > max_head_dim or value.shape[-1] != head_dim:
        return False, f"cuDNN needs head_dim a multiple of 8 and <= {max_head_dim}"
    if logit_soft_cap is not None:
        return False, "cuDNN has no logit soft cap"
    if mask.has_spans or mask.padding_mask is not None or not static_positions:
        return False, "cuDNN takes causal/window masks only (no spans, padding or positions)"
    if (mask.causal or mask.sliding_window is not None) and q_len != kv_len:
        return False, "cuDNN's causal mask is top-left aligned: needs q_len == kv_len"
    if mask.sliding_window is not None and not mask.causal:
        return False, "cuDNN's sliding window needs a causal mask"
    return True, ""


def _prefers_blockwise(query, key, mask):
    q_len, kv_len = static_dim(query.shape[1]), static_dim(key.shape[1])
    if q_len is None or kv_len is None or q_len < BLOCKWISE_MIN_Q_LEN:
        return False
    if kv_len >= BLOCKWISE_MIN_KV_LEN:
        return True
    window = mask.sliding_window
    return window is not None and window * BLOCKWISE_WINDOW_RATIO <= kv_len


def choose_implementation(
    query, key, mask, *, value=None, logit_soft_cap=None, static_positions=False
):
    """Pick the implementation for this backend, device and shape.

    JAX on TPU -> splash; JAX on GPU -> cuDNN where it supports the call; long sequences
    (q_len >= 128 and kv_len >= 2048) or a sliding window at most a quarter of kv_len ->
    block-wise; otherwise torch_sdpa under torch (without a logit soft cap, torch >= 2.5)
    and xla elsewhere. Returns the name.
    """
    return _choose(query, key, mask, value, logit_soft_cap, static_positions)[0]


def _choose(query, key, mask, value, logit_soft_cap, static_positions):
    """`choose_implementation`, with the reason for the log."""
    platform = _jax_platform()
    q_len = static_dim(query.shape[1])
    if platform == "tpu" and q_len is not None and q_len >= SPLASH_MIN_Q_LEN:
        ok, why = splash_supported(query, key, mask, static_positions=static_positions)
        if ok:
            return "splash", "TPU"
        logger.debug("splash skipped: %s", why)
    if platform == "gpu":
        ok, why = cudnn_supported(
            query, key, query if value is None else value, mask,
            logit_soft_cap=logit_soft_cap, static_positions=static_positions,
        )
        if ok:
            return "cudnn", "GPU"
        logger.debug("cudnn skipped: %s", why)
    if _prefers_blockwise(query, key, mask):
        return "blockwise", "long sequence or short window"
    if keras.backend.backend() == "torch":
        ok, why = torch_sdpa_supported(logit_soft_cap=logit_soft_cap)
        if ok:
            return "torch_sdpa", "short sequence, torch's fused kernel"
        logger.debug("torch_sdpa skipped: %s", why)
    return "xla", "short sequence"


# --- implementations ------------------------------------------------------------------


def _validate(query, key, value, sliding_window, logit_soft_cap, padding_mask, implementation):
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if len(tensor.shape) != 4:
            raise ValueError(
                f"`{name}` must have rank 4 (batch, length, heads, head_dim). "
                f"Received: {name}.shape={tuple(tensor.shape)}"
            )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            "`query` and `key` must have the same head_dim. Received: "
            f"query.shape={tuple(query.shape)}, key.shape={tuple(key.shape)}"
        )
    if tuple(key.shape[1:3]) != tuple(value.shape[1:3]):
        raise ValueError(
            "`key` and `value` must have the same length and number of heads. "
            f"Received: key.shape={tuple(key.shape)}, value.shape={tuple(value.shape)}"
        )
    num_query_heads, num_kv_heads = query.shape[2], key.shape[2]
    if num_query_heads is not None and num_kv_heads is not None:
        if num_query_heads % num_kv_heads != 0:
            raise ValueError(
                "The number of key/value heads must divide the number of query heads. "
                f"Received: query heads={num_query_heads}, key/value heads={num_kv_heads}"
            )
    if sliding_window is not None and (
        isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window <= 0
    ):
        raise ValueError(
            "`sliding_window` must be None or a positive int. "
            f"Received: sliding_window={sliding_window!r}"
        )
    if logit_soft_cap is not None and not (logit_soft_cap > 0):
        raise ValueError(
            "`logit_soft_cap` must be None or a positive number. "
            f"Received: logit_soft_cap={logit_soft_cap!r}"
        )
    if padding_mask is not None:
        expected = (key.shape[0], key.shape[1])
        got = tuple(padding_mask.shape)
        if len(got) != 2 or any(
            e is not None and g is not None and e != g for e, g in zip(expected, got)
        ):
            raise ValueError(
                "`padding_mask` must have shape (batch, kv_len) = "
                f"{expected}. Received: padding_mask.shape={got}"
            )
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attention `implementation={implementation!r}`. "
            f"Expected one of {IMPLEMENTATIONS} or None (automatic)."
        )


def _validate_block_size(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"`{name}` must be None or a positive int. Received: {name}={value!r}")


def xla_attention(query, key, value, mask, logit_soft_cap=None, scale=None):
    """Plain einsum softmax attention with a dense mask: the reference path.

    Shapes: query `(B, Tq, N, H)`, key/value `(B, Tk, K, H)` with `N = K * G`.
    Fully masked query rows return zeros instead of NaN.
    """
    batch, q_len, num_query_heads, head_dim = ops.shape(query)
    num_kv_heads = ops.shape(key)[2]
    groups = num_query_heads // num_kv_heads
    if scale is None:
        scale = 1.0 / float(query.shape[-1]) ** 0.5
    compute_dtype = query.dtype
    query = ops.reshape(query, (batch, q_len, num_kv_heads, groups, head_dim))
    # Head-major operands make both products plain batched matmuls (faster on XLA CPU).
    query = ops.transpose(query, (0, 2, 3, 1, 4))
    key, value = ops.transpose(key, (0, 2, 1, 3)), ops.transpose(value, (0, 2, 1, 3))
    # Scores in float32: soft cap and softmax are sensitive in low precision.
    scores = ops.einsum("bkgqh,bksh->bkgqs", query, key)
    scores = ops.cast(scores, "float32") * scale
    if logit_soft_cap is not None:
        scores = ops.tanh(scores / logit_soft_cap) * logit_soft_cap
    allowed = masks_lib.dense_mask(mask)[:, None, None, :, :]
    # Softmax written out: masking the exponentials zeroes fully masked rows in one pass
    # (a second `where` after `ops.softmax` costs another T x T sweep).
    scores = ops.where(allowed, scores, -1e30)
    exponentials = ops.exp(scores - ops.max(scores, axis=-1, keepdims=True))
    exponentials = ops.where(allowed, exponentials, 0.0)
    total = ops.sum(exponentials, axis=-1, keepdims=True)
    weights = exponentials / ops.maximum(total, 1e-30)
    output = ops.einsum("bkgqs,bksh->bkgqh", ops.cast(weights, compute_dtype), value)
    output = ops.transpose(output, (0, 3, 1, 2, 4))
    return ops.reshape(output, (batch, q_len, num_query_heads, ops.shape(value)[-1]))


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _splash_block(block_size, length):
    block = SPLASH_DEFAULT_BLOCK_SIZE if block_size is None else block_size
    block = _round_up(block, _SPLASH_LANES)
    return min(block, _round_up(length, _SPLASH_LANES))


@functools.lru_cache(maxsize=32)
def _splash_kernel(mask_key, num_heads, block_q, block_kv, logit_soft_cap, interpret):
    """Build (once per static mask and shape) a splash kernel; mask info is computed here."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    kind, shape, offset, window, causal, dense = mask_key
    if kind == "numpy":
        base = splash.NumpyMask(np.frombuffer(dense, dtype=np.bool_).reshape(shape))
    elif window is not None:
        base = splash.LocalMask(shape, window_size=(window - 1, 0 if causal else None), offset=offset)
    elif causal:
        base = splash.CausalMask(shape, offset=offset)
    else:
        base = splash.FullMask(shape)
    sizes = splash.BlockSizes(
        block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
        block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
        block_q_dq=block_q, block_kv_dq=block_kv,
    )
    return splash.make_splash_mha_single_device(
        splash.MultiHeadMask([base] * num_heads),
        block_sizes=sizes,
        attn_logits_soft_cap=logit_soft_cap,
        interpret=interpret,
    )


def _splash_span_mask(q_spans, k_spans, shape, q_len, kv_len, causal, window):
    """Static bool mask `(padded_q, padded_kv)` for one example with bidirectional spans."""
    query_positions = np.arange(shape[0])[:, None] + (kv_len - q_len)
    key_positions = np.arange(shape[1])[None, :]
    ordered = np.ones(shape, dtype=bool)
    if causal:
        ordered &= key_positions <= query_positions
    if window is not None:
        ordered &= query_positions - key_positions < window
    q_spans = np.pad(q_spans, (0, shape[0] - q_len))[:, None]
    k_spans = np.pad(k_spans, (0, shape[1] - kv_len))[None, :]
    return ordered | ((q_spans == k_spans) & (q_spans > 0))


def _rows_with_visible_key(mask, q_len, kv_len, q_spans, k_spans):
    """Bool `(batch or 1, q_len)`: the query sees at least one key (default positions).

    Splash returns a mean of values, not zeros, on fully masked rows; O(T) prefix sums
    find those rows without a T x T mask.
    """
    import jax
    import jax.numpy as jnp

    positions = np.arange(q_len) + (kv_len - q_len)
    lo = np.zeros(q_len, dtype=np.int64)
    if mask.sliding_window is not None:
        lo = np.clip(positions - mask.sliding_window + 1, 0, kv_len)
    hi = np.full(q_len, kv_len - 1)
    if mask.causal:
        hi = np.minimum(positions, kv_len - 1)
    if mask.padding_mask is None:
        real = jnp.ones((1, kv_len), jnp.int32)
    else:
        real = jnp.asarray(mask.padding_mask).astype(jnp.int32)
    prefix = jnp.pad(jnp.cumsum(real, axis=1), ((0, 0), (1, 0)))
    count = prefix[:, np.maximum(hi, lo - 1) + 1] - prefix[:, lo]
    visible = count > 0
    if q_spans is not None:
        num_spans = int(max(q_spans.max(), k_spans.max())) + 1
        real_in_span = jax.vmap(
            lambda r, s: jax.ops.segment_sum(r, s, num_segments=num_spans)
        )(jnp.broadcast_to(real, k_spans.shape), jnp.asarray(k_spans))
        in_span = jnp.take_along_axis(real_in_span, jnp.asarray(q_spans), axis=1)
        visible = visible | ((in_span > 0) & (jnp.asarray(q_spans) > 0))
    return visible


def splash_attention(
    query, key, value, mask, *, logit_soft_cap=None, scale=None,
    block_size_q=None, block_size_kv=None, interpret=False,
):
    """Pallas splash attention (JAX): static causal/local/span masks, padding as segment ids.

    Assumes the default positions. GQA runs natively (splash's MHA kernel groups query
    heads over key/value heads); the batch is vmapped, or looped when span masks differ
    per example. Lengths are padded to the block sizes (multiples of 128).
    """
    import jax
    import jax.numpy as jnp
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    batch, q_len, num_heads, head_dim = query.shape
    kv_len = key.shape[1]
    if scale is None:
        scale = 1.0 / float(head_dim) ** 0.5
    block_q, block_kv = _splash_block(block_size_q, q_len), _splash_block(block_size_kv, kv_len)
    padded_q, padded_kv = _round_up(q_len, block_q), _round_up(kv_len, block_kv)
    # Splash does not scale; scaling q first keeps the soft cap on the scaled scores.
    q = jnp.transpose(query * jnp.asarray(scale, query.dtype), (0, 2, 1, 3))
    k, v = jnp.transpose(key, (0, 2, 1, 3)), jnp.transpose(value, (0, 2, 1, 3))
    q = jnp.pad(q, ((0, 0), (0, 0), (0, padded_q - q_len), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, 0), (0, padded_kv - kv_len), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, 0), (0, padded_kv - kv_len), (0, 0)))
    if mask.padding_mask is None:
        kv_segments = jnp.ones((batch, kv_len), jnp.int32)
    else:
        kv_segments = jnp.asarray(mask.padding_mask).astype(jnp.int32)
    kv_segments = jnp.pad(kv_segments, ((0, 0), (0, padded_kv - kv_len)))
    q_segments = jnp.ones((padded_q,), jnp.int32)
    shape = (padded_q, padded_kv)
    cap = None if logit_soft_cap is None else float(logit_soft_cap)

    def run(kernel, q_b, k_b, v_b, kv_segments_b):
        return kernel(q_b, k_b, v_b, segment_ids=splash.SegmentIds(q=q_segments, kv=kv_segments_b))

    q_spans = k_spans = None
    if mask.has_spans:
        q_spans = np.broadcast_to(_concrete_numpy(mask.query_span_ids), (batch, q_len))
        k_spans = np.broadcast_to(_concrete_numpy(mask.key_span_ids), (batch, kv_len))
        outputs = []
        for b in range(batch):
            dense = _splash_span_mask(
                q_spans[b], k_spans[b], shape, q_len, kv_len, mask.causal, mask.sliding_window
            )
            key_b = ("numpy", shape, 0, None, None, dense.tobytes())
            kernel = _splash_kernel(key_b, num_heads, block_q, block_kv, cap, interpret)
            outputs.append(run(kernel, q[b], k[b], v[b], kv_segments[b]))
        out = jnp.stack(outputs)
    else:
        key_b = ("lazy", shape, kv_len - q_len, mask.sliding_window, bool(mask.causal), None)
        kernel = _splash_kernel(key_b, num_heads, block_q, block_kv, cap, interpret)
        out = jax.vmap(functools.partial(run, kernel))(q, k, v, kv_segments)
    out = jnp.transpose(out[:, :, :q_len], (0, 2, 1, 3))
    visible = _rows_with_visible_key(mask, q_len, kv_len, q_spans, k_spans)
    return jnp.where(visible[:, :, None, None], out, jnp.zeros_like(out))


def cudnn_attention(query, key, value, mask, *, scale=None, jax_implementation="cudnn"):
    """cuDNN flash attention via `jax.nn.dot_product_attention` (causal/window masks only).

    `jax_implementation="xla"` runs the same call through XLA (to test the mapping on CPU).
    """
    import jax

    window = None
    if mask.sliding_window is not None:
        # Ours: i - j < w. JAX's (left, right) window: i - left <= j <= i + right.
        window = (mask.sliding_window - 1, 0)
    return jax.nn.dot_product_attention(
        query, key, value, scale=scale, is_causal=bool(mask.causal),
        local_window_size=window, implementation=jax_implementation,
    )


def torch_sdpa_attention(query, key, value, mask, *, scale=None):
    """`torch.nn.functional.scaled_dot_product_attention` (torch's fused kernels) with the
    dense mask of `mask`; the torch backend's short-sequence path. Measured on CPU; on
    CUDA a dense mask with grouped heads leaves torch its math kernel.

    Shapes as `xla_attention`; key/value heads are shared by query groups (`enable_gqa`).
    Fully masked query rows return zeros, as every other path.
    """
    import torch

    allowed = masks_lib.dense_mask(mask)  # (batch or 1, q_len, kv_len)
    key, value = ops.cast(key, query.dtype), ops.cast(value, query.dtype)
    query, key, value = (ops.transpose(t, (0, 2, 1, 3)) for t in (query, key, value))
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed[:, None],
        scale=None if scale is None else float(scale), enable_gqa=True,
    )
    output = ops.where(ops.any(allowed, axis=-1)[:, None, :, None], output, 0.0)
    return ops.transpose(output, (0, 2, 1, 3))


def _resolve(implementation, query, key, value, mask, logit_soft_cap, static_positions, interpret):
    """The implementation that runs, and why; a forced one the mask does not fit falls back."""
    if implementation is None:
        return _choose(query, key, mask, value, logit_soft_cap, static_positions)
    _check_device(implementation, interpret)
    if implementation == "splash":
        ok, why = splash_supported(query, key, mask, static_positions=static_positions)
    elif implementation == "cudnn":
        ok, why = cudnn_supported(
            query, key, value, mask, logit_soft_cap=logit_soft_cap,
            static_positions=static_positions,
        )
    elif implementation == "blockwise":
        ok, why = blockwise_supported(query, key)
    elif implementation == "torch_sdpa":
        ok, why = torch_sdpa_supported(logit_soft_cap=logit_soft_cap)
    else:
        ok, why = True, ""
    if ok:
        return implementation, "requested"
    fallback = "blockwise" if blockwise_supported(query, key)[0] else "xla"
    logger.warning("attention: %s unsupported here (%s); using %s", implementation, why, fallback)
    return fallback, f"{implementation} fallback: {why}"


def dot_product_attention(
    query,
    key,
    value,
    *,
    causal=True,
    sliding_window=None,
    logit_soft_cap=None,
    padding_mask=None,
    query_positions=None,
    key_positions=None,
    query_span_ids=None,
    key_span_ids=None,
    scale=None,
    implementation=None,
    block_size_q=None,
    block_size_kv=None,
    interpret=False,
):
    """Scaled dot-product attention with grouped heads and described masks.

    Args:
        query: tensor `(batch, q_len, num_query_heads, head_dim)`.
        key: tensor `(batch, kv_len, num_key_value_heads, head_dim)`.
        value: tensor `(batch, kv_len, num_key_value_heads, head_dim)`.
        causal: bool. Keys after the query are hidden. Defaults to `True`.
        sliding_window: `None` or int. A query at position `i` sees keys
            `i - sliding_window < j <= i`. Defaults to `None` (global).
        logit_soft_cap: `None` or float `c`; scores become `c * tanh(s / c)`.
        padding_mask: `None` or bool `(batch, kv_len)`, True for real tokens.
        query_positions: `None` or int `(q_len,)` / `(batch, q_len)`. Defaults to
            the last `q_len` of `kv_len` positions.
        key_positions: `None` or int `(kv_len,)` / `(batch, kv_len)`; negative marks
            an empty cache slot. Defaults to `arange(kv_len)`.
        query_span_ids, key_span_ids: `None` or int `(batch, len)`. Tokens sharing a
            span id > 0 attend to each other bidirectionally (image tokens).
        scale: `None` or float. Defaults to `1 / sqrt(head_dim)`.
        implementation: `None` (automatic, see `choose_implementation`) or one of
            `IMPLEMENTATIONS`. One the backend or device cannot run raises `ValueError`;
            one that cannot express this mask or shape falls back (logged).
        block_size_q, block_size_kv: `None` or int. Block sizes of the block-wise and
            splash kernels. Defaults: block-wise 512 x 256, splash 512 x 512.
        interpret: bool. Run splash in Pallas interpret mode (CPU tests). Defaults to `False`.

    Returns:
        Tensor `(batch, q_len, num_query_heads, head_dim)`. The choice made is
        `last_attention_implementation()`.
    """
    _validate(query, key, value, sliding_window, logit_soft_cap, padding_mask, implementation)
    _validate_block_size("block_size_q", block_size_q)
    _validate_block_size("block_size_kv", block_size_kv)
    q_len, kv_len = query.shape[1], key.shape[1]
    static_positions = query_positions is None and key_positions is None
    default_q, default_k = None, None
    if query_positions is None or key_positions is None:
        default_q, default_k = masks_lib.default_positions(
            q_len if q_len is not None else ops.shape(query)[1],
            kv_len if kv_len is not None else ops.shape(key)[1],
        )
    if query_span_ids is not None and key_span_ids is None:
        key_span_ids = query_span_ids
    mask = masks_lib.AttentionMask(
        query_positions=default_q if query_positions is None else query_positions,
        key_positions=default_k if key_positions is None else key_positions,
        causal=causal,
        sliding_window=sliding_window,
        padding_mask=padding_mask,
        query_span_ids=query_span_ids,
        key_span_ids=key_span_ids,
    )
    implementation, reason = _resolve(
        implementation, query, key, value, mask, logit_soft_cap, static_positions, interpret
    )
    _record(implementation, reason)
    static = dict(
        implementation=implementation, causal=bool(causal), sliding_window=sliding_window,
        logit_soft_cap=logit_soft_cap, scale=scale, static_positions=static_positions,
        block_size_q=block_size_q, block_size_kv=block_size_kv, interpret=interpret,
    )
    arrays = (
        query, key, value, mask.query_positions, mask.key_positions, padding_mask,
        query_span_ids, key_span_ids,
    )
    if implementation in ("xla", "blockwise") and _is_eager_jax(arrays):
        try:
            compiled = _compiled_attend(tuple(sorted(static.items())))
        except TypeError:  # an unhashable argument (a tensor scale): run op by op
            compiled = None
        if compiled is not None:
            return compiled(*(_unwrap(a) for a in arrays))
    return _attend(*arrays, **static)


def _attend(
    query, key, value, query_positions, key_positions, padding_mask, query_span_ids,
    key_span_ids, *, implementation, causal, sliding_window, logit_soft_cap, scale,
    static_positions, block_size_q, block_size_kv, interpret,
):
    """Run the chosen implementation."""
    mask = masks_lib.AttentionMask(
        query_positions=query_positions,
        key_positions=key_positions,
        causal=causal,
        sliding_window=sliding_window,
        padding_mask=padding_mask,
        query_span_ids=query_span_ids,
        key_span_ids=key_span_ids,
    )
    if implementation == "blockwise":
        return blockwise_lib.blockwise_attention(
            query, key, value, mask, logit_soft_cap=logit_soft_cap, scale=scale,
            static_positions=static_positions,
            block_size_q=block_size_q or blockwise_lib.DEFAULT_BLOCK_SIZE_Q,
            block_size_kv=block_size_kv or blockwise_lib.DEFAULT_BLOCK_SIZE_KV,
        )
    if implementation == "splash":
        return splash_attention(
            query, key, value, mask, logit_soft_cap=logit_soft_cap, scale=scale,
            block_size_q=block_size_q, block_size_kv=block_size_kv, interpret=interpret,
        )
    if implementation == "cudnn":
        return cudnn_attention(query, key, value, mask, scale=scale)
    if implementation == "torch_sdpa":
        return torch_sdpa_attention(query, key, value, mask, scale=scale)
    return xla_attention(query, key, value, mask, logit_soft_cap=logit_soft_cap, scale=scale)


def _is_eager_jax(arrays):
    """JAX backend, called outside any trace (no Tracer among the inputs)."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return not any(isinstance(_unwrap(a), jax.core.Tracer) for a in arrays if a is not None)


def _unwrap(tensor):
    return tensor.value if isinstance(tensor, keras.Variable) else tensor


@functools.lru_cache(maxsize=64)
def _compiled_attend(static_items):
    """Eager JAX compiles every op separately on first use (seconds for the block-wise
    loop); one `jax.jit` of the whole call compiles once per static configuration."""
    import jax

    return jax.jit(functools.partial(_attend, **dict(static_items)))
