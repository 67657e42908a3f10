"""CrossModalAttention: text tokens attend to vision tokens (and, optionally, back).

Used by the gated cross-attention blocks in `layers/fusion.py`; one call to the dispatch point
per direction, with the other modality's padding mask.
"""

import keras
from keras import ops

from vishwam_keras.checks import check_int
from vishwam_keras.layers.attention.kernels import dot_product_attention
from vishwam_keras.layers.normalization import RMSNorm


def _check_mask(name, mask, tokens, tokens_name):
    expected = tuple(tokens.shape[:2])
    got = tuple(mask.shape)
    if len(got) != 2 or any(
        e is not None and g is not None and e != g for e, g in zip(expected, got)
    ):
        raise ValueError(
            f"`{name}` must have shape (batch, length) = {expected}, matching "
            f"`{tokens_name}`. Received: {name}.shape={got}"
        )


@keras.saving.register_keras_serializable(package="vishwam_keras")
class OneWayCrossAttention(keras.layers.Layer):
    """One direction of cross-attention: queries from one modality, keys/values from the other.

    Internal to `CrossModalAttention`. Projections are bias-free (Gemma style); queries and
    keys are optionally RMS-normalised per head. No RoPE: the two sequences share no
    position axis.
    """

    def __init__(
        self,
        query_dim,
        key_value_dim,
        num_heads,
        num_key_value_heads,
        head_dim,
        use_query_key_norm=True,
        attention_implementation=None,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.query_dim = query_dim
        self.key_value_dim = key_value_dim
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.use_query_key_norm = use_query_key_norm
        self.attention_implementation = attention_implementation
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer
            or keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
        )
        common = dict(kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy)
        self.query_dense = keras.layers.EinsumDense(
            "btd,dnh->btnh", (None, num_heads, head_dim), name="query", **common
        )
        self.key_dense = keras.layers.EinsumDense(
            "btd,dnh->btnh", (None, num_key_value_heads, head_dim), name="key", **common
        )
        self.value_dense = keras.layers.EinsumDense(
            "btd,dnh->btnh", (None, num_key_value_heads, head_dim), name="value", **common
        )
        self.output_dense = keras.layers.EinsumDense(
            "btnh,nhd->btd", (None, query_dim), name="attention_output", **common
        )
        if use_query_key_norm:
            self.query_norm = RMSNorm(name="query_norm", dtype=self.dtype_policy)
            self.key_norm = RMSNorm(name="key_norm", dtype=self.dtype_policy)

    def build(self, queries_shape, keys_values_shape=None):
        self.query_dense.build((None, None, self.query_dim))
        self.key_dense.build((None, None, self.key_value_dim))
        self.value_dense.build((None, None, self.key_value_dim))
        self.output_dense.build((None, None, self.num_heads, self.head_dim))
        if self.use_query_key_norm:
            self.query_norm.build((None, None, self.num_heads, self.head_dim))
            self.key_norm.build((None, None, self.num_key_value_heads, self.head_dim))
        self.built = True

    def call(self, queries, keys_values, key_mask=None):
        query = self.query_dense(queries)
        key = self.key_dense(keys_values)
        value = self.value_dense(keys_values)
        if self.use_query_key_norm:
            query = self.query_norm(query)
            key = self.key_norm(key)
        attended = dot_product_attention(
            query,
            key,
            value,
            causal=False,
            padding_mask=key_mask,
            scale=self.head_dim**-0.5,
            implementation=self.attention_implementation,
        )
        output = self.output_dense(attended)
        if key_mask is not None:
            # A query with no valid key gets exactly zero, whatever the kernel returns
            # for an empty softmax row (`where`, not a product, so NaN cannot leak).
            has_keys = ops.any(key_mask, axis=-1)[:, None, None]
            output = ops.where(has_keys, output, ops.zeros_like(output))
        return output

    def compute_output_shape(self, queries_shape, keys_values_shape=None):
        return tuple(queries_shape[:-1]) + (self.query_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "query_dim": self.query_dim,
                "key_value_dim": self.key_value_dim,
                "num_heads": self.num_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "use_query_key_norm": self.use_query_key_norm,
                "attention_implementation": self.attention_implementation,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="vishwam_keras")
class CrossModalAttention(keras.layers.Layer):
    """Multi-head cross-attention from text tokens to vision tokens, optionally both ways.

    Text queries attend to the vision tokens (keys and values) without a causal mask;
    padded vision tokens are hidden by `vision_mask`. With `bidirectional=True` a second
    set of projections lets the vision tokens attend to the text as well, hidden by
    `text_padding_mask`. Queries and keys are optionally RMS-normalised per head
    (QK-norm); there is no positional encoding. Every score goes through
    `vishwam_keras.layers.attention.kernels.dot_product_attention`. A batch row without
    any valid key (no image, or no text) gets an update of exactly zero.

    Args:
        hidden_dim: int. Width of the text tokens and of the text update.
        num_heads: int. Number of query heads.
        head_dim: int. Width of each head.
        num_key_value_heads: `None` or int. Key/value heads; must divide `num_heads`.
            Defaults to `num_heads`.
        vision_dim: `None` or int. Width of the vision tokens and of the vision update.
            Defaults to `hidden_dim`.
        bidirectional: bool. Also return the vision-to-text update. Defaults to `False`.
        use_query_key_norm: bool. RMS-normalise queries and keys per head. Defaults to `True`.
        attention_implementation: `None` or a name accepted by `dot_product_attention`.
            Defaults to `None` (automatic).
        kernel_initializer: initializer for the projections. Defaults to variance scaling.

    Call arguments:
        text: tensor `(batch, text_length, hidden_dim)`.
        vision: tensor `(batch, vision_length, vision_dim)`.
        vision_mask: optional bool tensor `(batch, vision_length)`, True for real vision
            tokens.
        text_padding_mask: optional bool tensor `(batch, text_length)`, True for real text
            tokens; used only when `bidirectional`.

    Returns:
        The text update `(batch, text_length, hidden_dim)`; with `bidirectional=True` the
        pair `(text_update, vision_update)`, the latter `(batch, vision_length,
        vision_dim)`.

    Example:
    >>> attention = CrossModalAttention(hidden_dim=32, num_heads=4, head_dim=8, vision_dim=16)
    >>> tuple(attention(keras.ops.ones((2, 5, 32)), keras.ops.ones((2, 3, 16))).shape)
    (2, 5, 32)
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        head_dim,
        num_key_value_heads=None,
        vision_dim=None,
        bidirectional=False,
        use_query_key_norm=True,
        attention_implementation=None,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("hidden_dim", hidden_dim)
        check_int("num_heads", num_heads)
        check_int("head_dim", head_dim)
        check_int("num_key_value_heads", num_key_value_heads, allow_none=True)
        check_int("vision_dim", vision_dim, allow_none=True)
        if num_key_value_heads is not None and num_heads % num_key_value_heads:
            raise ValueError(
                "`num_key_value_heads` must divide `num_heads`. Received: "
                f"num_heads={num_heads}, num_key_value_heads={num_key_value_heads}"
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_key_value_heads = num_key_value_heads
        self.vision_dim = vision_dim
        self.bidirectional = bidirectional
        self.use_query_key_norm = use_query_key_norm
        self.attention_implementation = attention_implementation
        self.kernel_initializer = keras.initializers.get(kernel_initializer) if (
            kernel_initializer is not None
        ) else None

        common = dict(
            num_heads=num_heads,
            num_key_value_heads=num_key_value_heads or num_heads,
            head_dim=head_dim,
            use_query_key_norm=use_query_key_norm,
            attention_implementation=attention_implementation,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
        )
        self.text_to_vision = OneWayCrossAttention(
            hidden_dim, self._vision_dim, name="text_to_vision", **common
        )
        if bidirectional:
            self.vision_to_text = OneWayCrossAttention(
                self._vision_dim, hidden_dim, name="vision_to_text", **common
            )

    @property
    def _vision_dim(self):
        return self.vision_dim or self.hidden_dim

    def build(self, text_shape, vision_shape=None):
        self.text_to_vision.build(text_shape)
        if self.bidirectional:
            self.vision_to_text.build(vision_shape)
        self.built = True

    def _check_inputs(self, text, vision):
        for name, tensor, width in (
            ("text", text, self.hidden_dim),
            ("vision", vision, self._vision_dim),
        ):
            shape = tuple(tensor.shape)
            if len(shape) != 3 or (shape[-1] is not None and shape[-1] != width):
                raise ValueError(
                    f"`{name}` must have shape (batch, length, {width}). "
                    f"Received: {name}.shape={shape}"
                )

    def call(self, text, vision, vision_mask=None, text_padding_mask=None):
        self._check_inputs(text, vision)
        if vision_mask is not None:
            _check_mask("vision_mask", vision_mask, vision, "vision")
            vision_mask = ops.cast(vision_mask, "bool")
        text_update = self.text_to_vision(text, vision, key_mask=vision_mask)
        if not self.bidirectional:
            return text_update
        if text_padding_mask is not None:
            _check_mask("text_padding_mask", text_padding_mask, text, "text")
            text_padding_mask = ops.cast(text_padding_mask, "bool")
        vision_update = self.vision_to_text(vision, text, key_mask=text_padding_mask)
        if vision_mask is not None:
            # Padded vision tokens carry no update.
            vision_update = ops.where(
                vision_mask[:, :, None], vision_update, ops.zeros_like(vision_update)
            )
        return text_update, vision_update

    def compute_output_shape(self, text_shape, vision_shape=None):
        text_update = tuple(text_shape[:-1]) + (self.hidden_dim,)
        if not self.bidirectional:
            return text_update
        return text_update, tuple(vision_shape[:-1]) + (self._vision_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "vision_dim": self.vision_dim,
                "bidirectional": self.bidirectional,
                "use_query_key_norm": self.use_query_key_norm,
                "attention_implementation": self.attention_implementation,
                "kernel_initializer": (
                    keras.initializers.serialize(self.kernel_initializer)
                    if self.kernel_initializer is not None
                    else None
                ),
            }
        )
        return config
