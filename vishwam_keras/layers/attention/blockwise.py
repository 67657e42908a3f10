"""Block-wise online-softmax attention (FlashAttention-2) written once in `keras.ops`.

Behind `kernels.dot_product_attention(..., implementation="blockwise")`: never builds a
T x T tensor, visits only the key blocks a query block can see, and has its own backward.

Algorithm (Dao, 2023, "FlashAttention-2", Alg. 1 and 2). Queries are cut into blocks of
`block_size_q` rows and keys into blocks of `block_size_kv`. A static list of the visible
(query block, key block) pairs is walked by `ops.fori_loop` (a real loop: one block pair
live at a time, and a small program to compile), updating each query row's running max
`m`, running sum `l` and output accumulator `o`:

    m' = max(m, rowmax(S));  l' = exp(m - m') l + rowsum(exp(S - m'));
    o' = exp(m - m') o + exp(S - m') V

The online softmax does not depend on the order of the pairs, so the pairs that are fully
visible run in one loop without any mask and only the edge pairs (diagonal, window edge,
padding) build a block mask, in a second loop. Memory is O(T * head_dim) for the
accumulators plus O(block_size_q * block_size_kv) per head for one block pair.

The backward pass is a custom gradient (`keras.ops.custom_gradient`) that keeps only
q, k, v, the output and the row log-sum-exp `L = m + log l`, and recomputes each block's
probabilities `P = exp(S - L)` (FlashAttention-2, Alg. 2): `dV += P^T dO`,
`dS = P * (dO V^T - rowsum(dO * O))`, `dQ += dS K`, `dK += dS^T Q`. Nothing of size T x T
is stored, on any backend, with no backend-specific rematerialisation.

Block skipping: when query and key positions are the default aranges (prefill, or the last
`q_len` of `kv_len` positions), the key blocks visible to each query block follow from the
causal flag and the sliding window and are computed here in Python; sliding attention
then costs O(T * window). With general positions (a cache with empty slots, packed
sequences) or bidirectional spans (which can see ahead), every pair is visited and only the
per-block mask decides.
"""

import dataclasses

import numpy as np
from keras import ops

DEFAULT_BLOCK_SIZE_Q = 512
# Tuned on a 2-core CPU (benchmarks/RESULTS_attention.md): 512 x 256 was the fastest of
# 256..1024 for the backward pass and within noise of the best forward.
DEFAULT_BLOCK_SIZE_KV = 256
# Initial running max: finite, so that `exp(-inf - m)` of a masked score is 0, never NaN.
_INITIAL_MAX = -1e30


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Padded lengths and the static (query block, key block) pairs to visit.

    `full_pairs` are statically known to be entirely visible (no mask is built for them);
    `masked_pairs` need the per-block mask.
    """

    q_len: int
    kv_len: int
    padded_q_len: int
    padded_kv_len: int
    block_size_q: int
    block_size_kv: int
    full_pairs: tuple
    masked_pairs: tuple

    @property
    def visited_pairs(self):
        """Query x key scores computed (padded), to compare with `q_len * kv_len`."""
        pairs = len(self.full_pairs) + len(self.masked_pairs)
        return pairs * self.block_size_q * self.block_size_kv


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _block_sizes(q_len, kv_len, block_size_q, block_size_kv):
    """Blocks no larger than the (8-aligned) sequence, so short inputs stay one block."""
    block_size_q = min(block_size_q, _round_up(q_len, 8))
    block_size_kv = min(block_size_kv, _round_up(kv_len, 8))
    return block_size_q, block_size_kv


def _visible_key_range(row_start, row_stop, offset, kv_len, causal, sliding_window, has_spans):
    """Keys `[lo, hi]` that queries at rows `[row_start, row_stop)` may see (default positions)."""
    first, last = offset + row_start, offset + row_stop - 1
    lo = 0
    if sliding_window is not None and not has_spans:
        lo = max(0, first - sliding_window + 1)
    hi = kv_len - 1
    if causal and not has_spans:
        hi = min(kv_len - 1, last)
    return lo, hi


def _fully_visible(row_start, row_stop, key_start, key_stop, offset, causal, sliding_window):
    """True when every query row in the range sees every key in the range (default positions)."""
    first, last = offset + row_start, offset + row_stop - 1
    if causal and key_stop - 1 > first:
        return False
    if sliding_window is not None and last - key_start >= sliding_window:
        return False
    return True


def plan_blocks(
    q_len,
    kv_len,
    *,
    causal,
    sliding_window=None,
    static_positions=True,
    has_spans=False,
    has_padding=False,
    block_size_q=DEFAULT_BLOCK_SIZE_Q,
    block_size_kv=DEFAULT_BLOCK_SIZE_KV,
):
    """The static block pairs of one attention call.

    Args:
        q_len, kv_len: int. Static sequence lengths.
        causal, sliding_window: the mask's ordering rule.
        static_positions: bool. Positions are the default aranges (queries are the last
            `q_len` of `kv_len` positions), so visible blocks can be computed here.
        has_spans, has_padding: bool. Whether span ids / a padding mask are present.
        block_size_q, block_size_kv: int. Block sizes before clipping to the lengths.

    Returns:
        A `BlockPlan`.
    """
    block_size_q, block_size_kv = _block_sizes(q_len, kv_len, block_size_q, block_size_kv)
    padded_q_len = _round_up(q_len, block_size_q)
    padded_kv_len = _round_up(kv_len, block_size_kv)
    num_q_blocks = padded_q_len // block_size_q
    num_k_blocks = padded_kv_len // block_size_kv
    full, masked = [], []
    offset = kv_len - q_len
    for qb in range(num_q_blocks):
        if not static_positions:
            masked.extend((qb, kb) for kb in range(num_k_blocks))
            continue
        # Padded query rows ride along with the last block; their output is dropped.
        row_start, row_stop = qb * block_size_q, min((qb + 1) * block_size_q, q_len)
        lo, hi = _visible_key_range(
            row_start, row_stop, offset, kv_len, causal, sliding_window, has_spans
        )
        if hi < lo:
            continue
        for kb in range(lo // block_size_kv, hi // block_size_kv + 1):
            key_start, key_stop = kb * block_size_kv, (kb + 1) * block_size_kv
            needs_mask = (
                has_padding
                or has_spans
                or key_stop > kv_len
                or not _fully_visible(
                    row_start, row_stop, key_start, key_stop, offset, causal, sliding_window
                )
            )
            (masked if needs_mask else full).append((qb, kb))
    return BlockPlan(
        q_len, kv_len, padded_q_len, padded_kv_len, block_size_q, block_size_kv,
        tuple(full), tuple(masked),
    )


def _batched_int(tensor, length, padded_length, pad_value):
    """`(len,)` or `(batch, len)` int -> `(batch or 1, padded_len)` padded with `pad_value`."""
    tensor = ops.convert_to_tensor(tensor, dtype="int32")
    if len(tensor.shape) == 1:
        tensor = tensor[None, :]
    if padded_length > length:
        tensor = ops.pad(
            tensor, [[0, 0], [0, padded_length - length]], constant_values=pad_value
        )
    return tensor


@dataclasses.dataclass
class _MaskTensors:
    """The mask description, padded to the plan's lengths."""

    query_positions: object
    key_positions: object
    causal: bool
    sliding_window: object
    padding_mask: object
    query_span_ids: object
    key_span_ids: object


def _pad_mask(mask, plan):
    q_len, kv_len = plan.q_len, plan.kv_len
    q_pad, kv_pad = plan.padded_q_len, plan.padded_kv_len
    padding = None
    if mask.padding_mask is not None:
        padding = ops.cast(mask.padding_mask, "bool")
        if kv_pad > kv_len:
            padding = ops.pad(padding, [[0, 0], [0, kv_pad - kv_len]], constant_values=False)
    q_spans = k_spans = None
    if mask.has_spans:
        q_spans = _batched_int(mask.query_span_ids, q_len, q_pad, 0)
        k_spans = _batched_int(mask.key_span_ids, kv_len, kv_pad, 0)
    return _MaskTensors(
        query_positions=_batched_int(mask.query_positions, q_len, q_pad, 0),
        key_positions=_batched_int(mask.key_positions, kv_len, kv_pad, -1),
        causal=mask.causal,
        sliding_window=mask.sliding_window,
        padding_mask=padding,
        query_span_ids=q_spans,
        key_span_ids=k_spans,
    )


def _slice_axis(tensor, axis, start, size):
    """`tensor[..., start:start + size, ...]` on `axis`, with a traced `start`."""
    shape = list(ops.shape(tensor))
    shape[axis] = size
    begin = [0] * len(shape)
    begin[axis] = start
    return ops.slice(tensor, begin, shape)


def _add_rows(accumulator, start, rows):
    """`accumulator[:, :, start:start + len(rows)] += rows` (in place inside a loop on XLA)."""
    begin = [0] * len(accumulator.shape)
    begin[2] = start
    current = _slice_axis(accumulator, 2, start, ops.shape(rows)[2])
    return ops.slice_update(accumulator, begin, current + rows)


def _set_rows(accumulator, start, rows):
    begin = [0] * len(accumulator.shape)
    begin[2] = start
    return ops.slice_update(accumulator, begin, rows)


def _block_allowed(tensors, row_start, key_start, plan):
    """Bool `(batch or 1, block_q, block_kv)`: the `masks.dense_mask` rule for one pair."""
    bq, bk = plan.block_size_q, plan.block_size_kv
    q_pos = _slice_axis(tensors.query_positions, 1, row_start, bq)[:, :, None]
    k_pos = _slice_axis(tensors.key_positions, 1, key_start, bk)[:, None, :]
    allowed = ops.greater_equal(k_pos, 0)
    ordered = None
    if tensors.causal:
        ordered = ops.less_equal(k_pos, q_pos)
    if tensors.sliding_window is not None:
        in_window = ops.less(q_pos - k_pos, tensors.sliding_window)
        ordered = in_window if ordered is None else ops.logical_and(ordered, in_window)
    if tensors.query_span_ids is not None:
        q_span = _slice_axis(tensors.query_span_ids, 1, row_start, bq)[:, :, None]
        k_span = _slice_axis(tensors.key_span_ids, 1, key_start, bk)[:, None, :]
        same_span = ops.logical_and(ops.equal(q_span, k_span), ops.greater(q_span, 0))
        ordered = same_span if ordered is None else ops.logical_or(ordered, same_span)
    if ordered is not None:
        allowed = ops.logical_and(allowed, ordered)
    if tensors.padding_mask is not None:
        padding = _slice_axis(tensors.padding_mask, 1, key_start, bk)
        allowed = ops.logical_and(allowed, padding[:, None, :])
    return allowed


def _block_scores(q_block, k_block, allowed, scale, logit_soft_cap):
    """Scores `(B, K, block_q, G, block_kv)` in float32, masked with -inf; and the tanh."""
    scores = ops.einsum("bkrgh,bkch->bkrgc", q_block, k_block)
    scores = ops.cast(scores, "float32") * scale
    capped = None
    if logit_soft_cap is not None:
        capped = ops.tanh(scores / logit_soft_cap)
        scores = capped * logit_soft_cap
    if allowed is not None:
        scores = ops.where(allowed[:, None, :, None, :], scores, float("-inf"))
    return scores, capped


def _loop_over_pairs(plan, tensors, body, state):
    """Run `body(q_start, k_start, allowed, state)` over the full, then the masked pairs."""
    for pairs, masked in ((plan.full_pairs, False), (plan.masked_pairs, True)):
        if not pairs:
            continue
        q_starts = ops.convert_to_tensor(
            np.array([qb * plan.block_size_q for qb, _ in pairs], "int32")
        )
        k_starts = ops.convert_to_tensor(
            np.array([kb * plan.block_size_kv for _, kb in pairs], "int32")
        )

        def step(i, state, q_starts=q_starts, k_starts=k_starts, masked=masked):
            q_start, k_start = ops.take(q_starts, i), ops.take(k_starts, i)
            allowed = _block_allowed(tensors, q_start, k_start, plan) if masked else None
            return body(q_start, k_start, allowed, state)

        state = ops.fori_loop(0, len(pairs), step, state)
    return state


def _forward(q, k, v, tensors, plan, scale, logit_soft_cap):
    """Online-softmax forward. Returns output `(B, K, Tq, G, H)` float32 and the row LSE."""
    bq, bk = plan.block_size_q, plan.block_size_kv
    rows = tuple(ops.shape(q)[:4])
    out = ops.zeros(rows + (ops.shape(v)[-1],), "float32")
    state = (out, ops.full(rows, _INITIAL_MAX, "float32"), ops.zeros(rows, "float32"))

    def body(q_start, k_start, allowed, state):
        out, row_max, row_sum = state
        scores, _ = _block_scores(
            _slice_axis(q, 2, q_start, bq), _slice_axis(k, 2, k_start, bk),
            allowed, scale, logit_soft_cap,
        )
        max_prev = _slice_axis(row_max, 2, q_start, bq)
        max_next = ops.maximum(max_prev, ops.max(scores, axis=-1))
        probs = ops.exp(scores - max_next[..., None])
        correction = ops.exp(max_prev - max_next)
        sum_next = correction * _slice_axis(row_sum, 2, q_start, bq) + ops.sum(probs, axis=-1)
        values = ops.einsum(
            "bkrgc,bkch->bkrgh", ops.cast(probs, v.dtype), _slice_axis(v, 2, k_start, bk)
        )
        out_next = correction[..., None] * _slice_axis(out, 2, q_start, bq) + ops.cast(
            values, "float32"
        )
        return (
            _set_rows(out, q_start, out_next),
            _set_rows(row_max, q_start, max_next),
            _set_rows(row_sum, q_start, sum_next),
        )

    out, row_max, row_sum = _loop_over_pairs(plan, tensors, body, state)
    seen = ops.greater(row_sum, 0.0)
    safe_sum = ops.where(seen, row_sum, ops.ones_like(row_sum))
    # Fully masked rows: output 0, and LSE 0 so that `exp(-inf - L)` stays 0 in backward.
    out = ops.where(seen[..., None], out / safe_sum[..., None], ops.zeros_like(out))
    log_sum_exp = ops.where(seen, row_max + ops.log(safe_sum), ops.zeros_like(row_max))
    return out, log_sum_exp


def _backward(q, k, v, out, log_sum_exp, grad_out, tensors, plan, scale, logit_soft_cap):
    """FlashAttention-2 backward: recompute each block's probabilities from the LSE."""
    bq, bk = plan.block_size_q, plan.block_size_kv
    grad_out = ops.cast(grad_out, "float32")
    # D_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij.
    delta = ops.sum(grad_out * out, axis=-1)
    grad_out = ops.cast(grad_out, v.dtype)
    state = (
        ops.zeros(ops.shape(q), "float32"),
        ops.zeros(ops.shape(k), "float32"),
        ops.zeros(ops.shape(v), "float32"),
    )

    def body(q_start, k_start, allowed, state):
        grad_q, grad_k, grad_v = state
        q_block, k_block = _slice_axis(q, 2, q_start, bq), _slice_axis(k, 2, k_start, bk)
        v_block = _slice_axis(v, 2, k_start, bk)
        grad_out_block = _slice_axis(grad_out, 2, q_start, bq)
        scores, capped = _block_scores(q_block, k_block, allowed, scale, logit_soft_cap)
        probs = ops.exp(scores - _slice_axis(log_sum_exp, 2, q_start, bq)[..., None])
        grad_v_block = ops.einsum("bkrgc,bkrgh->bkch", ops.cast(probs, v.dtype), grad_out_block)
        grad_probs = ops.einsum("bkrgh,bkch->bkrgc", grad_out_block, v_block)
        grad_scores = probs * (
            ops.cast(grad_probs, "float32") - _slice_axis(delta, 2, q_start, bq)[..., None]
        )
        if capped is not None:
            # d/ds [c tanh(s / c)] = 1 - tanh^2.
            grad_scores = grad_scores * (1.0 - ops.square(capped))
        grad_scores = ops.cast(grad_scores * scale, q.dtype)
        grad_q_block = ops.einsum("bkrgc,bkch->bkrgh", grad_scores, k_block)
        grad_k_block = ops.einsum("bkrgc,bkrgh->bkch", grad_scores, q_block)
        return (
            _add_rows(grad_q, q_start, ops.cast(grad_q_block, "float32")),
            _add_rows(grad_k, k_start, ops.cast(grad_k_block, "float32")),
            _add_rows(grad_v, k_start, ops.cast(grad_v_block, "float32")),
        )

    grad_q, grad_k, grad_v = _loop_over_pairs(plan, tensors, body, state)
    return ops.cast(grad_q, q.dtype), ops.cast(grad_k, k.dtype), ops.cast(grad_v, v.dtype)


def _attention_with_gradient(q, k, v, tensors, plan, scale, logit_soft_cap):
    """Forward on head-major padded tensors with the FlashAttention-2 custom gradient."""

    @ops.custom_gradient
    def attend(q, k, v):
        out, log_sum_exp = _forward(q, k, v, tensors, plan, scale, logit_soft_cap)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return _backward(
                q, k, v, out, log_sum_exp, upstream, tensors, plan, scale, logit_soft_cap
            )

        return ops.cast(out, q.dtype), grad

    return attend(q, k, v)


def blockwise_attention(
    query,
    key,
    value,
    mask,
    *,
    logit_soft_cap=None,
    scale=None,
    static_positions=False,
    block_size_q=DEFAULT_BLOCK_SIZE_Q,
    block_size_kv=DEFAULT_BLOCK_SIZE_KV,
):
    """Block-wise online-softmax attention with grouped heads and a described mask.

    Args:
        query: tensor `(batch, q_len, num_query_heads, head_dim)`; `q_len` static.
        key: tensor `(batch, kv_len, num_key_value_heads, head_dim)`; `kv_len` static.
        value: tensor `(batch, kv_len, num_key_value_heads, value_dim)`.
        mask: `masks.AttentionMask`.
        logit_soft_cap: `None` or float `c`; scores become `c * tanh(s / c)`.
        scale: `None` or float. Defaults to `1 / sqrt(head_dim)`.
        static_positions: bool. The mask's positions are the default aranges, so the
            visible key blocks are computed statically (block skipping). Defaults to `False`.
        block_size_q: int. Query rows per block. Defaults to 512.
        block_size_kv: int. Keys per block. Defaults to 256.

    Returns:
        Tensor `(batch, q_len, num_query_heads, value_dim)`; fully masked rows are zeros.
    """
    q_len, kv_len = query.shape[1], key.shape[1]
    if q_len is None or kv_len is None:
        raise ValueError(
            "Block-wise attention needs static sequence lengths. Received: "
            f"query.shape={tuple(query.shape)}, key.shape={tuple(key.shape)}"
        )
    plan = plan_blocks(
        q_len,
        kv_len,
        causal=mask.causal,
        sliding_window=mask.sliding_window,
        static_positions=static_positions,
        has_spans=mask.has_spans,
        has_padding=mask.padding_mask is not None,
        block_size_q=block_size_q,
        block_size_kv=block_size_kv,
    )
    num_query_heads, head_dim = query.shape[2], query.shape[3]
    num_kv_heads = key.shape[2]
    groups = num_query_heads // num_kv_heads
    if scale is None:
        scale = 1.0 / float(head_dim) ** 0.5
    batch = ops.shape(query)[0]
    # Head-major layouts make every block product a plain batched matmul over (B, K).
    q = ops.reshape(query, (batch, q_len, num_kv_heads, groups, head_dim))
    q = ops.transpose(q, (0, 2, 1, 3, 4))
    k = ops.transpose(key, (0, 2, 1, 3))
    v = ops.transpose(value, (0, 2, 1, 3))
    if plan.padded_q_len > q_len:
        q = ops.pad(q, [[0, 0], [0, 0], [0, plan.padded_q_len - q_len], [0, 0], [0, 0]])
    if plan.padded_kv_len > kv_len:
        kv_padding = [[0, 0], [0, 0], [0, plan.padded_kv_len - kv_len], [0, 0]]
        k, v = ops.pad(k, kv_padding), ops.pad(v, kv_padding)
    tensors = _pad_mask(mask, plan)
    out = _attention_with_gradient(q, k, v, tensors, plan, float(scale), logit_soft_cap)
    out = ops.transpose(out[:, :, :q_len], (0, 2, 1, 3, 4))
    return ops.reshape(out, (batch, q_len, num_query_heads, ops.shape(value)[-1]))
