"""SparseAttention: block-sparse causal attention (local + global + strided key blocks).

Each query block attends only to its kept key blocks, so cost grows with the number of kept
blocks, not with T^2 (Child et al., 2019). Every block goes through the dispatch point.
"""

import keras
from keras import ops

from vishwam_keras.layers.attention.grouped_query import GroupedQueryAttention, _seed_kwargs
from vishwam_keras.layers.attention.kernels import dot_product_attention


def kept_blocks(query_block, num_local_blocks, num_global_blocks, stride):
    """Key blocks visible to `query_block`: the last `num_local_blocks` (itself included),
    the first `num_global_blocks`, and every `stride`-th block (summary blocks)."""
    kept = set(range(max(0, query_block - num_local_blocks + 1), query_block + 1))
    kept |= set(range(min(num_global_blocks, query_block + 1)))
    if stride:
        kept |= {b for b in range(query_block + 1) if (b + 1) % stride == 0}
    return sorted(kept)


@keras.saving.register_keras_serializable(package="vishwam_keras")
class SparseAttention(GroupedQueryAttention):
    """Causal block-sparse attention with local, global and strided key blocks.

    Args:
        embed_dim: int. Model width.
        num_heads: int. Query heads.
        block_size: int. Tokens per block. Defaults to `64`.
        num_local_blocks: int >= 1. Recent blocks each query block sees, itself included.
            Defaults to `2`.
        num_global_blocks: int >= 0. Leading blocks every query sees. Defaults to `1`.
        stride: `None` or int >= 1. Every `stride`-th block is also visible. Defaults to `None`.
        num_kv_heads, head_dim, use_qk_norm, attn_logits_soft_cap: as `FlashAttention2`.
        **kwargs: other `GroupedQueryAttention` arguments.

    Example:
    >>> layer = SparseAttention(embed_dim=32, num_heads=4, block_size=4)
    >>> tuple(layer(keras.ops.ones((1, 16, 32))).shape)
    (1, 16, 32)
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        block_size=64,
        num_local_blocks=2,
        num_global_blocks=1,
        stride=None,
        num_kv_heads=None,
        head_dim=None,
        use_qk_norm=True,
        attn_logits_soft_cap=None,
        **kwargs,
    ):
        for name, value, minimum in (
            ("block_size", block_size, 1),
            ("num_local_blocks", num_local_blocks, 1),
            ("num_global_blocks", num_global_blocks, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
            raise ValueError(f"`stride` must be None or an int >= 1. Received: stride={stride!r}")
        for name in ("hidden_dim", "num_query_heads", "num_key_value_heads", "use_query_key_norm",
                     "logit_soft_cap", "sliding_window_size"):
            kwargs.pop(name, None)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.block_size = block_size
        self.num_local_blocks = num_local_blocks
        self.num_global_blocks = num_global_blocks
        self.stride = stride
        super().__init__(
            **_seed_kwargs(embed_dim, num_heads, num_kv_heads, head_dim, use_qk_norm, attn_logits_soft_cap),
            **kwargs,
        )

    def _kernel(self, query, key, value, **mask_kwargs):
        return dot_product_attention(
            query, key, value, causal=True, logit_soft_cap=self.logit_soft_cap, scale=self.scale,
            implementation=self.attention_implementation, **mask_kwargs,
        )

    def _keep_mask(self, query_position, key_positions):
        """Per-key visibility for one query position (decode)."""
        query_block = ops.floor_divide(query_position, self.block_size)
        key_block = ops.floor_divide(key_positions, self.block_size)
        keep = ops.greater(key_block, query_block - self.num_local_blocks)
        keep = ops.logical_or(keep, ops.less(key_block, self.num_global_blocks))
        if self.stride:
            keep = ops.logical_or(keep, ops.equal(ops.mod(key_block + 1, self.stride), 0))
        return keep

    def _attend(self, query, key, value, padding_mask=None, query_span_ids=None,
                query_positions=None, key_positions=None):
        batch = ops.shape(query)[0]
        if query_positions is not None:  # a decode step over the cache
            keep = self._keep_mask(query_positions[0], key_positions)[None, :]
            keep = ops.broadcast_to(keep, (batch, ops.shape(key)[1]))
            return self._kernel(query, key, value, padding_mask=keep,
                                query_positions=query_positions, key_positions=key_positions)
        length = query.shape[1]
        if length is None:
            raise ValueError("SparseAttention needs a static sequence length (got None).")
        num_blocks = -(-length // self.block_size)
        outputs = []
        for query_block in range(num_blocks):
            q_start = query_block * self.block_size
            q_end = min(length, q_start + self.block_size)
            blocks = kept_blocks(query_block, self.num_local_blocks, self.num_global_blocks, self.stride)
            spans = [(b * self.block_size, min(length, (b + 1) * self.block_size)) for b in blocks]
            gather = lambda t: ops.concatenate([t[:, s:e] for s, e in spans], axis=1)
            mask = None if padding_mask is None else gather(padding_mask)
            key_pos = ops.concatenate([ops.arange(s, e, dtype="int32") for s, e in spans], axis=0)
            outputs.append(
                self._kernel(
                    query[:, q_start:q_end], gather(key), gather(value), padding_mask=mask,
                    query_positions=ops.arange(q_start, q_end, dtype="int32"), key_positions=key_pos,
                )
            )
        return ops.concatenate(outputs, axis=1)

    def get_config(self):
        config = super().get_config()
        for name in ("hidden_dim", "num_query_heads", "num_key_value_heads", "use_query_key_norm",
                     "logit_soft_cap", "sliding_window_size"):
            config.pop(name)
        config.update(
            {
                "embed_dim": self.embed_dim,
                "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads,
                "block_size": self.block_size,
                "num_local_blocks": self.num_local_blocks,
                "num_global_blocks": self.num_global_blocks,
                "stride": self.stride,
                "use_qk_norm": self.use_query_key_norm,
                "attn_logits_soft_cap": self.logit_soft_cap,
            }
        )
        return config
