"""One transformer decoder block with Gemma-3 sandwich norms.

`x + post_norm(attention(pre_norm(x)))`, then `x + post_norm(ffn(pre_norm(x)))`.
"""

import keras

from vishwam_keras.layers.attention.grouped_query import GroupedQueryAttention
from vishwam_keras.layers.attention.multi_scale import MultiScaleAttention
from vishwam_keras.layers.attention.sparse import SparseAttention

ATTENTION_TYPES = ("gqa", "flash", "multi_scale", "sparse")
from vishwam_keras.layers.feedforward import GatedFeedForward
from vishwam_keras.layers.normalization import RMSNorm


@keras.saving.register_keras_serializable(package="vishwam_keras")
class DecoderBlock(keras.layers.Layer):
    """A pre- and post-normalised self-attention + gated-GELU block.

    Args:
        hidden_dim: int. Model width.
        intermediate_dim: int. Feed-forward width.
        num_query_heads: int.
        num_key_value_heads: int.
        head_dim: int.
        sliding_window_size: `None` (a global layer) or int (a local layer).
        use_query_key_norm: bool. Defaults to `True`.
        attention_logit_soft_cap: `None` or float. Defaults to `None`.
        rope_max_wavelength: int. Defaults to `10000`.
        rope_scaling_factor: float. Defaults to `1.0`.
        query_pre_attn_scalar: `None` or float. Defaults to `head_dim`.
        layer_norm_epsilon: float. Defaults to `1e-6`.
        dropout: float. Defaults to `0.0`.
        attention_implementation: `None` or an implementation name. Defaults to `None`.
        attention_type: `"gqa"` (default), `"flash"` (GQA forced onto the block-wise
            kernel), `"multi_scale"` or `"sparse"` (`attention_kwargs` give their
            `window_sizes` / block pattern; these layers ignore `sliding_window_size`).
        attention_kwargs: `None` or dict of extra arguments for the attention layer.

    Call arguments:
        inputs, padding_mask, span_ids, cache, cache_update_index, cache_update_mask,
        training: as for
        `GroupedQueryAttention`.

    Example:
    >>> block = DecoderBlock(hidden_dim=32, intermediate_dim=64, num_query_heads=4,
    ...                      num_key_value_heads=1, head_dim=8, sliding_window_size=4)
    >>> tuple(block(keras.ops.ones((2, 6, 32))).shape)
    (2, 6, 32)
    """

    def __init__(
        self,
        hidden_dim,
        intermediate_dim,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        sliding_window_size=None,
        use_query_key_norm=True,
        attention_logit_soft_cap=None,
        rope_max_wavelength=10000,
        rope_scaling_factor=1.0,
        query_pre_attn_scalar=None,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        attention_implementation=None,
        attention_type="gqa",
        attention_kwargs=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"`attention_type` must be one of {ATTENTION_TYPES}. Received: "
                f"attention_type={attention_type!r}"
            )
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.sliding_window_size = sliding_window_size
        self.use_query_key_norm = use_query_key_norm
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.attention_implementation = attention_implementation
        self.attention_type = attention_type
        self.attention_kwargs = dict(attention_kwargs or {})
        # Training-time switch, not architecture (not in the config): recompute this block's
        # activations in the backward pass. Set by `VishwamBackbone.enable_rematerialization`.
        self.rematerialize = False

        def norm(name):
            return RMSNorm(layer_norm_epsilon, name=name, dtype=self.dtype_policy)

        self.pre_attention_norm = norm("pre_attention_norm")
        self.post_attention_norm = norm("post_attention_norm")
        self.pre_ffw_norm = norm("pre_ffw_norm")
        self.post_ffw_norm = norm("post_ffw_norm")
        common = dict(
            rope_max_wavelength=rope_max_wavelength,
            rope_scaling_factor=rope_scaling_factor,
            query_pre_attn_scalar=query_pre_attn_scalar,
            dropout=dropout,
            name="attention",
            dtype=self.dtype_policy,
        )
        if attention_type in ("gqa", "flash"):
            self.attention = GroupedQueryAttention(
                hidden_dim=hidden_dim,
                num_query_heads=num_query_heads,
                num_key_value_heads=num_key_value_heads,
                head_dim=head_dim,
                use_query_key_norm=use_query_key_norm,
                logit_soft_cap=attention_logit_soft_cap,
                sliding_window_size=sliding_window_size,
                attention_implementation=(
                    "blockwise" if attention_type == "flash" else attention_implementation
                ),
                **common,
                **self.attention_kwargs,
            )
        else:  # multi_scale / sparse: head groups or block patterns replace the window
            layer_cls = MultiScaleAttention if attention_type == "multi_scale" else SparseAttention
            self.attention = layer_cls(
                embed_dim=hidden_dim,
                num_heads=num_query_heads,
                num_kv_heads=num_key_value_heads,
                head_dim=head_dim,
                use_qk_norm=use_query_key_norm,
                attn_logits_soft_cap=attention_logit_soft_cap,
                attention_implementation=attention_implementation,
                **common,
                **self.attention_kwargs,
            )
        self.feedforward = GatedFeedForward(
            hidden_dim, intermediate_dim, name="feedforward", dtype=self.dtype_policy
        )

    @property
    def is_local(self):
        return self.sliding_window_size is not None

    def build(self, input_shape):
        for norm in (
            self.pre_attention_norm,
            self.post_attention_norm,
            self.pre_ffw_norm,
            self.post_ffw_norm,
        ):
            norm.build(input_shape)
        self.attention.build(input_shape)
        self.feedforward.build(input_shape)
        self.built = True

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
        if self.rematerialize and cache is None:
            return self._rematerialized(inputs, padding_mask, span_ids, training)
        return self._forward(
            inputs, padding_mask, span_ids, cache, cache_update_index, cache_update_mask, training
        )

    def _forward(
        self, inputs, padding_mask=None, span_ids=None, cache=None, cache_update_index=0,
        cache_update_mask=None, training=None,
    ):
        attended = self.attention(
            self.pre_attention_norm(inputs),
            padding_mask=padding_mask,
            span_ids=span_ids,
            cache=cache,
            cache_update_index=cache_update_index,
            cache_update_mask=cache_update_mask,
            training=training,
        )
        if cache is not None:
            attended, cache = attended
        x = inputs + self.post_attention_norm(attended)
        x = x + self.post_ffw_norm(self.feedforward(self.pre_ffw_norm(x)))
        if cache is not None:
            return x, cache
        return x

    def _rematerialized(self, inputs, padding_mask, span_ids, training):
        """The block through `keras.remat`: its activations are recomputed in the backward
        pass instead of stored. Only tensors cross the remat boundary (`training` is closed
        over), which is why the block does this itself rather than through
        `keras.RematScope`, whose wrapper also traces Python flags."""
        masks = {"padding_mask": padding_mask, "span_ids": span_ids}
        masks = {name: mask for name, mask in masks.items() if mask is not None}

        def body(x, *values):
            return self._forward(x, training=training, **dict(zip(masks, values)))

        return keras.remat(body)(inputs, *masks.values())

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "sliding_window_size": self.sliding_window_size,
                "use_query_key_norm": self.use_query_key_norm,
                "attention_logit_soft_cap": self.attention_logit_soft_cap,
                "rope_max_wavelength": self.rope_max_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                "query_pre_attn_scalar": self.query_pre_attn_scalar,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
                "attention_implementation": self.attention_implementation,
                "attention_type": self.attention_type,
                "attention_kwargs": self.attention_kwargs,
            }
        )
        return config
