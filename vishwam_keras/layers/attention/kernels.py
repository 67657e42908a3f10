"""THE attention dispatch point: one function, several implementations.

Every attention layer calls `dot_product_attention`; this is the only module (with
`distribution.py`) that may look at the backend or the device. Implementations:
`"xla"` (plain einsum softmax, the reference), and the fused kernels added beside it.
"""

import logging

import keras
from keras import ops

from vishwam_keras.layers.attention import masks as masks_lib

logger = logging.getLogger("vishwam_keras.attention")

IMPLEMENTATIONS = ("xla",)


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
    # Scores in float32: soft cap and softmax are sensitive in low precision.
    scores = ops.einsum("bqkgh,bskh->bkgqs", query, key)
    scores = ops.cast(scores, "float32") * scale
    if logit_soft_cap is not None:
        scores = ops.tanh(scores / logit_soft_cap) * logit_soft_cap
    allowed = masks_lib.dense_mask(mask)[:, None, None, :, :]
    scores = ops.where(allowed, scores, ops.full_like(scores, -1e30))
    weights = ops.softmax(scores, axis=-1)
    weights = ops.where(allowed, weights, ops.zeros_like(weights))
    output = ops.einsum("bkgqs,bskh->bqkgh", ops.cast(weights, compute_dtype), value)
    return ops.reshape(output, (batch, q_len, num_query_heads, head_dim))


def choose_implementation(query, key, mask):
    """Pick the implementation for this backend, device and shape."""
    return "xla"


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
        implementation: `None` (automatic) or one of `IMPLEMENTATIONS`.

    Returns:
        Tensor `(batch, q_len, num_query_heads, head_dim)`.
    """
    _validate(query, key, value, sliding_window, logit_soft_cap, padding_mask, implementation)
    q_len, kv_len = query.shape[1], key.shape[1]
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
    if implementation is None:
        implementation = choose_implementation(query, key, mask)
    logger.debug("attention implementation: %s (backend %s)", implementation, keras.backend.backend())
    return xla_attention(query, key, value, mask, logit_soft_cap=logit_soft_cap, scale=scale)
