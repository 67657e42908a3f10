"""Structured attention masks: causal, sliding window, bidirectional spans, padding.

Masks are *described* by token positions and a few flags (`AttentionMask`); each kernel in
`kernels.py` turns the description into what it needs. Only the fallback path calls
`dense_mask`, which materialises the (batch, q_len, kv_len) boolean.
"""

import dataclasses

from keras import ops


@dataclasses.dataclass
class AttentionMask:
    """What a query may see, described by positions instead of a dense matrix.

    A query at position `i` may attend to a key at position `j` when the key slot is
    valid (`j >= 0` and `padding_mask` is True) and either
    - `j <= i` (if `causal`) and `i - j < sliding_window` (if a window is set), or
    - both tokens lie in the same bidirectional span (`span_id > 0` and equal).

    Attributes:
        query_positions: int tensor `(q_len,)` or `(batch, q_len)`.
        key_positions: int tensor `(kv_len,)` or `(batch, kv_len)`; negative marks an
            empty cache slot.
        causal: bool.
        sliding_window: `None` or int > 0.
        padding_mask: `None` or bool tensor `(batch, kv_len)`, True for real tokens.
        query_span_ids: `None` or int tensor `(batch, q_len)`; 0 for ordinary tokens.
        key_span_ids: `None` or int tensor `(batch, kv_len)`.
    """

    query_positions: object
    key_positions: object
    causal: bool = True
    sliding_window: object = None
    padding_mask: object = None
    query_span_ids: object = None
    key_span_ids: object = None

    @property
    def has_spans(self):
        return self.query_span_ids is not None and self.key_span_ids is not None


def default_positions(q_len, kv_len):
    """Queries are the last `q_len` of `kv_len` positions (prefill: all of them)."""
    key_positions = ops.arange(kv_len, dtype="int32")
    query_positions = ops.arange(kv_len - q_len, kv_len, dtype="int32")
    return query_positions, key_positions


def _as_batched(positions):
    """`(len,)` -> `(1, len)`; `(batch, len)` unchanged."""
    positions = ops.convert_to_tensor(positions, dtype="int32")
    if len(positions.shape) == 1:
        positions = positions[None, :]
    return positions


def dense_mask(mask):
    """Materialise an `AttentionMask` as a bool tensor `(batch or 1, q_len, kv_len)`."""
    q_pos = _as_batched(mask.query_positions)[:, :, None]
    k_pos = _as_batched(mask.key_positions)[:, None, :]
    allowed = ops.greater_equal(k_pos, 0)
    ordered = ops.ones_like(allowed)
    if mask.causal:
        ordered = ops.logical_and(ordered, ops.less_equal(k_pos, q_pos))
    if mask.sliding_window is not None:
        ordered = ops.logical_and(
            ordered, ops.less(q_pos - k_pos, mask.sliding_window)
        )
    if mask.has_spans:
        q_span = ops.convert_to_tensor(mask.query_span_ids, "int32")[:, :, None]
        k_span = ops.convert_to_tensor(mask.key_span_ids, "int32")[:, None, :]
        same_span = ops.logical_and(ops.equal(q_span, k_span), ops.greater(q_span, 0))
        ordered = ops.logical_or(ordered, same_span)
    allowed = ops.logical_and(allowed, ordered)
    if mask.padding_mask is not None:
        padding = ops.cast(mask.padding_mask, "bool")[:, None, :]
        allowed = ops.logical_and(allowed, padding)
    return allowed
