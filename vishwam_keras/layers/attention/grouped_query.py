"""GroupedQueryAttention: projections, QK-norm, RoPE, KV cache, one call to the dispatch point.

The self-attention of every decoder block; local layers set `sliding_window_size`.
"""

import keras
from keras import ops

from vishwam_keras.checks import check_int
from vishwam_keras.layers import kv_cache
from vishwam_keras.layers.attention.kernels import dot_product_attention
from vishwam_keras.layers.normalization import RMSNorm
from vishwam_keras.layers.rotary import RotaryEmbedding


@keras.saving.register_keras_serializable(package="vishwam_keras")
class GroupedQueryAttention(keras.layers.Layer):
    """Multi-head attention with fewer key/value heads than query heads (Ainslie et al., 2023).

    Query heads are split into `num_key_value_heads` groups that share one key/value head
    (`num_key_value_heads=1` is multi-query attention). Queries and keys are optionally
    RMS-normalised per head (QK-norm), rotated by RoPE, and attended through
    `vishwam_keras.ops.dot_product_attention`, with an optional logit soft cap and
    sliding window.

    Args:
        hidden_dim: int. Width of the input and output.
        num_query_heads: int. Number of query heads.
        num_key_value_heads: int. Number of key/value heads; must divide `num_query_heads`.
        head_dim: int. Width of each head (even, for RoPE).
        use_query_key_norm: bool. RMS-normalise queries and keys per head. Defaults to `True`.
        logit_soft_cap: `None` or float. Caps scores with `c * tanh(s / c)`. Defaults to `None`.
        sliding_window_size: `None` or int. Local attention window. Defaults to `None` (global).
        rope_max_wavelength: int. RoPE base wavelength. Defaults to `10000`.
        rope_scaling_factor: float. RoPE position scaling. Defaults to `1.0`.
        query_pre_attn_scalar: `None` or float. Scores are scaled by its inverse square
            root. Defaults to `head_dim`.
        dropout: float. Dropout on the attention output in training. Defaults to `0.0`.
        attention_implementation: `None` or a name accepted by
            `vishwam_keras.ops.dot_product_attention`. Defaults to `None` (automatic).
        kernel_initializer: initializer for the projections.

    Call arguments:
        inputs: tensor `(batch, length, hidden_dim)`.
        padding_mask: optional bool/int tensor `(batch, length)`, 1 for real tokens.
        span_ids: optional int tensor `(batch, length)`: tokens sharing an id > 0 attend
            to each other bidirectionally (image tokens).
        cache: optional `(key, value)` pair from `vishwam_keras.layers.kv_cache`. With a
            cache, a call of several tokens is a prefill (it must start at index 0) and a
            call of one token is a decode step at `cache_update_index`.
        cache_update_index: int or scalar tensor, position of the first input token.
        cache_update_mask: optional bool `(batch,)` for a decode step: rows where it is
            False do not overwrite the cache slot (their prompt keys came from the prefill).
        training: bool.

    Returns:
        The output `(batch, length, hidden_dim)`, and with a cache also the updated cache.

    Example:
    >>> attention = GroupedQueryAttention(
    ...     hidden_dim=32, num_query_heads=4, num_key_value_heads=2, head_dim=8)
    >>> tuple(attention(keras.ops.ones((2, 5, 32))).shape)
    (2, 5, 32)
    """

    def __init__(
        self,
        hidden_dim,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        use_query_key_norm=True,
        logit_soft_cap=None,
        sliding_window_size=None,
        rope_max_wavelength=10000,
        rope_scaling_factor=1.0,
        query_pre_attn_scalar=None,
        dropout=0.0,
        attention_implementation=None,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("hidden_dim", hidden_dim)
        check_int("num_query_heads", num_query_heads)
        check_int("num_key_value_heads", num_key_value_heads)
        check_int("head_dim", head_dim)
        check_int("sliding_window_size", sliding_window_size, allow_none=True)
        if num_query_heads % num_key_value_heads != 0:
            raise ValueError(
                "`num_key_value_heads` must divide `num_query_heads`. Received: "
                f"num_query_heads={num_query_heads}, num_key_value_heads={num_key_value_heads}"
            )
        if head_dim % 2:
            raise ValueError(f"`head_dim` must be even for RoPE. Received: head_dim={head_dim}")
        if logit_soft_cap is not None and not logit_soft_cap > 0:
            raise ValueError(
                f"`logit_soft_cap` must be None or positive. Received: logit_soft_cap={logit_soft_cap!r}"
            )
        self.hidden_dim = hidden_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.use_query_key_norm = use_query_key_norm
        self.logit_soft_cap = logit_soft_cap
        self.sliding_window_size = sliding_window_size
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.dropout = dropout
        self.attention_implementation = attention_implementation
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer
            or keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
        )
        common = dict(kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy)
        self.query_dense = keras.layers.EinsumDense(
            "btd,dnh->btnh", (None, num_query_heads, head_dim), name="query", **common
        )
        self.key_dense = keras.layers.EinsumDense(
            "btd,dnh->btnh", (None, num_key_value_heads, head_dim), name="key", **common
        )
        self.value_dense = keras.layers.EinsumDense(
            "btd,dnh->btnh", (None, num_key_value_heads, head_dim), name="value", **common
        )
        self.output_dense = keras.layers.EinsumDense(
            "btnh,nhd->btd", (None, hidden_dim), name="attention_output", **common
        )
        if use_query_key_norm:
            self.query_norm = RMSNorm(name="query_norm", dtype=self.dtype_policy)
            self.key_norm = RMSNorm(name="key_norm", dtype=self.dtype_policy)
        self.rotary = RotaryEmbedding(
            rope_max_wavelength, rope_scaling_factor, name="rotary", dtype=self.dtype_policy
        )
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or input_shape[-1] not in (None, self.hidden_dim):
            raise ValueError(
                f"`inputs` must have shape (batch, length, hidden_dim={self.hidden_dim}). "
                f"Received: inputs.shape={input_shape}"
            )
        self.query_dense.build(input_shape)
        self.key_dense.build(input_shape)
        self.value_dense.build(input_shape)
        self.output_dense.build(
            (input_shape[0], input_shape[1], self.num_query_heads, self.head_dim)
        )
        if self.use_query_key_norm:
            self.query_norm.build((None, None, self.num_query_heads, self.head_dim))
            self.key_norm.build((None, None, self.num_key_value_heads, self.head_dim))
        self.built = True

    @property
    def scale(self):
        scalar = self.query_pre_attn_scalar or self.head_dim
        return float(scalar) ** -0.5

    def _project(self, inputs, positions):
        query = self.query_dense(inputs)
        key = self.key_dense(inputs)
        value = self.value_dense(inputs)
        if self.use_query_key_norm:
            query = self.query_norm(query)
            key = self.key_norm(key)
        query = self.rotary(query, positions=positions)
        key = self.rotary(key, positions=positions)
        return query, key, value

    def _attend(self, query, key, value, **mask_kwargs):
        return dot_product_attention(
            query,
            key,
            value,
            causal=True,
            sliding_window=self.sliding_window_size,
            logit_soft_cap=self.logit_soft_cap,
            scale=self.scale,
            implementation=self.attention_implementation,
            **mask_kwargs,
        )

    def call(
        self,
        inputs,
        padding_mask=None,
        span_ids=None,
        cache=None,
        cache_update_index=0,
        cache_update_mask=None,
        training=None,
    ):
        length = inputs.shape[1]
        if padding_mask is not None:
            padding_mask = ops.cast(padding_mask, "bool")
        decoding = cache is not None and length == 1
        if decoding:
            index = ops.cast(cache_update_index, "int32")
            positions = ops.reshape(index, (1,))
        else:
            positions = ops.arange(ops.shape(inputs)[1], dtype="int32")
        query, key, value = self._project(inputs, positions)

        if not decoding:
            output = self._attend(
                query, key, value, padding_mask=padding_mask, query_span_ids=span_ids
            )
            if cache is not None:
                cache = (
                    kv_cache.write_prefill(cache[0], key),
                    kv_cache.write_prefill(cache[1], value),
                )
        else:
            key_cache = kv_cache.write_decode(cache[0], key, index, cache_update_mask)
            value_cache = kv_cache.write_decode(cache[1], value, index, cache_update_mask)
            cache = (key_cache, value_cache)
            key_positions = kv_cache.slot_positions(key_cache.shape[1], index)
            output = self._attend(
                query,
                key_cache,
                value_cache,
                query_positions=positions,
                key_positions=key_positions,
            )
        output = self.output_dense(output)
        if self.dropout > 0:  # a rematerialised call passes `training` as a traced value
            output = self.dropout_layer(output, training=training)
        if cache is not None:
            return output, cache
        return output

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "use_query_key_norm": self.use_query_key_norm,
                "logit_soft_cap": self.logit_soft_cap,
                "sliding_window_size": self.sliding_window_size,
                "rope_max_wavelength": self.rope_max_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                "query_pre_attn_scalar": self.query_pre_attn_scalar,
                "dropout": self.dropout,
                "attention_implementation": self.attention_implementation,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


class AttentionType:
    """Attention kinds of the seed design: `GLOBAL` (whole prefix) or `LOCAL_SLIDING` (window)."""

    GLOBAL = "global"
    LOCAL_SLIDING = "local_sliding"
    ALL = (GLOBAL, LOCAL_SLIDING)


def _seed_kwargs(embed_dim, num_heads, num_kv_heads, head_dim, use_qk_norm, attn_logits_soft_cap):
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim <= 0:
        raise ValueError(f"`embed_dim` must be a positive int. Received: embed_dim={embed_dim!r}")
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads <= 0:
        raise ValueError(f"`num_heads` must be a positive int. Received: num_heads={num_heads!r}")
    if head_dim is None:
        if embed_dim % num_heads:
            raise ValueError(
                f"`num_heads` must divide `embed_dim` when `head_dim` is not given. Received: "
                f"embed_dim={embed_dim}, num_heads={num_heads}"
            )
        head_dim = embed_dim // num_heads
    return dict(
        hidden_dim=embed_dim,
        num_query_heads=num_heads,
        num_key_value_heads=num_heads if num_kv_heads is None else num_kv_heads,
        head_dim=head_dim,
        use_query_key_norm=use_qk_norm,
        logit_soft_cap=attn_logits_soft_cap,
    )


@keras.saving.register_keras_serializable(package="vishwam_keras")
class FlashAttention2(GroupedQueryAttention):
    """GQA through the block-wise online-softmax kernel (FlashAttention-2, Dao 2023).

    The same layer as `GroupedQueryAttention` with the seed's argument names, forced onto
    `implementation="blockwise"` (no T x T scores in memory; on TPU/GPU pass
    `attention_implementation=None` to let the dispatch pick splash or cuDNN).

    Args:
        embed_dim: int. Model width.
        num_heads: int. Query heads.
        num_kv_heads: `None` or int. Key/value heads. Defaults to `num_heads`.
        head_dim: `None` or int. Defaults to `embed_dim // num_heads`.
        use_qk_norm: bool. Defaults to `True`.
        attn_logits_soft_cap: `None` or float. Defaults to `None`.
        attn_type: `AttentionType.GLOBAL` or `AttentionType.LOCAL_SLIDING`.
        window_size: int, required for `LOCAL_SLIDING`.
        **kwargs: other `GroupedQueryAttention` arguments (RoPE, dropout, ...).

    Example:
    >>> layer = FlashAttention2(embed_dim=32, num_heads=4, num_kv_heads=2,
    ...     attn_type=AttentionType.LOCAL_SLIDING, window_size=4)
    >>> tuple(layer(keras.ops.ones((1, 10, 32))).shape)
    (1, 10, 32)
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        num_kv_heads=None,
        head_dim=None,
        use_qk_norm=True,
        attn_logits_soft_cap=None,
        attn_type=AttentionType.GLOBAL,
        window_size=None,
        attention_implementation="blockwise",
        **kwargs,
    ):
        if attn_type not in AttentionType.ALL:
            raise ValueError(
                f"`attn_type` must be one of {AttentionType.ALL}. Received: attn_type={attn_type!r}"
            )
        if attn_type == AttentionType.LOCAL_SLIDING and window_size is None:
            raise ValueError("`window_size` is required when attn_type is LOCAL_SLIDING.")
        for name in ("hidden_dim", "num_query_heads", "num_key_value_heads", "use_query_key_norm",
                     "logit_soft_cap", "sliding_window_size"):
            kwargs.pop(name, None)  # from_config passes the base names back
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.attn_type, self.window_size = attn_type, window_size
        super().__init__(
            **_seed_kwargs(embed_dim, num_heads, num_kv_heads, head_dim, use_qk_norm, attn_logits_soft_cap),
            sliding_window_size=window_size if attn_type == AttentionType.LOCAL_SLIDING else None,
            attention_implementation=attention_implementation,
            **kwargs,
        )

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
                "use_qk_norm": self.use_query_key_norm,
                "attn_logits_soft_cap": self.logit_soft_cap,
                "attn_type": self.attn_type,
                "window_size": self.window_size,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="vishwam_keras")
class SlidingWindowAttention(FlashAttention2):
    """Local attention within `window_size` tokens, linear in sequence length.

    `FlashAttention2` with `attn_type=LOCAL_SLIDING`: the block-wise kernel visits only
    the key blocks inside the window, and the decode cache is a ring buffer of
    `window_size` entries.

    Example:
    >>> layer = SlidingWindowAttention(embed_dim=32, num_heads=4, window_size=4)
    >>> tuple(layer(keras.ops.ones((1, 10, 32))).shape)
    (1, 10, 32)
    """

    def __init__(self, embed_dim, num_heads, window_size, **kwargs):
        kwargs.pop("attn_type", None)
        super().__init__(
            embed_dim, num_heads, attn_type=AttentionType.LOCAL_SLIDING, window_size=window_size,
            **kwargs,
        )
