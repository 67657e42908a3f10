"""Gated mixing of vision into text: AdaptiveModalityFusion and GatedCrossAttentionBlock.

Sits between the vision encoder and the decoder blocks; every gate starts closed, so a
freshly added fusion layer leaves the text model's output bit-identical.
"""

import keras
from keras import ops

from vishwam_keras.checks import check_int
from vishwam_keras.layers.attention.cross_modal import CrossModalAttention
from vishwam_keras.layers.feedforward import GatedFeedForward
from vishwam_keras.layers.normalization import RMSNorm
from vishwam_keras.ops.reductions import masked_mean


def _keep_rows(image_present, updated, original):
    """Rows whose `image_present` is False keep `original` exactly."""
    if image_present is None:
        return updated
    image_present = ops.reshape(ops.cast(image_present, "bool"), (-1, 1, 1))
    return ops.where(image_present, updated, original)


@keras.saving.register_keras_serializable(package="vishwam_keras")
class AdaptiveModalityFusion(keras.layers.Layer):
    """Adds a vision update to the text stream through a learned per-token gate.

    `output = text_hidden + gate * vision_update` with
    `gate = tanh(alpha) * sigmoid(mlp([rms(text_hidden), rms(pooled_image)]))`,
    one gate value per token. The gate MLP's output layer is zero-initialised and
    `alpha` starts at zero (Flamingo's tanh gating, Alayrac et al., 2022), so a fresh
    layer returns `text_hidden` bit-identically; `d output / d alpha =
    sigmoid(.) * vision_update` is non-zero, so the first training step opens the gate,
    after which the MLP learns which tokens should take more of the image.

    Args:
        hidden_dim: int. Width of `text_hidden` and `vision_update`.
        gate_hidden_dim: `None` or int. Hidden width of the gate MLP. Defaults to
            `max(hidden_dim // 4, 1)`.

    Call arguments:
        text_hidden: tensor `(batch, length, hidden_dim)`.
        vision_update: tensor `(batch, length, hidden_dim)`, e.g. a cross-attention output.
        pooled_image: tensor `(batch, pooled_dim)` (or `(batch, 1, pooled_dim)`), a summary
            of the image such as the mean of its vision tokens.
        image_present: optional bool tensor `(batch,)`; rows with False are returned
            unchanged.

    Returns:
        Tensor `(batch, length, hidden_dim)`.

    Example:
    >>> fusion = AdaptiveModalityFusion(hidden_dim=16)
    >>> text = keras.random.normal((2, 5, 16))
    >>> out = fusion(text, keras.random.normal((2, 5, 16)), keras.random.normal((2, 8)))
    >>> bool(keras.ops.all(out == text))  # the gate starts closed
    True
    """

    def __init__(self, hidden_dim, gate_hidden_dim=None, **kwargs):
        super().__init__(**kwargs)
        check_int("hidden_dim", hidden_dim)
        check_int("gate_hidden_dim", gate_hidden_dim, allow_none=True)
        self.hidden_dim = hidden_dim
        self.gate_hidden_dim = gate_hidden_dim
        self.text_norm = RMSNorm(name="text_norm", dtype=self.dtype_policy)
        self.image_norm = RMSNorm(name="image_norm", dtype=self.dtype_policy)
        self.gate_hidden = keras.layers.Dense(
            self._gate_hidden_dim, name="gate_hidden", dtype=self.dtype_policy
        )
        self.gate_output = keras.layers.Dense(
            1,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name="gate_output",
            dtype=self.dtype_policy,
        )

    @property
    def _gate_hidden_dim(self):
        return self.gate_hidden_dim or max(self.hidden_dim // 4, 1)

    def build(self, text_hidden_shape, vision_update_shape=None, pooled_image_shape=None):
        if pooled_image_shape is None or pooled_image_shape[-1] is None:
            raise ValueError(
                "`pooled_image` must have a known last dimension. "
                f"Received: pooled_image_shape={pooled_image_shape}"
            )
        pooled_dim = pooled_image_shape[-1]
        self.text_norm.build((None, None, self.hidden_dim))
        self.image_norm.build((None, pooled_dim))
        self.gate_hidden.build((None, None, self.hidden_dim + pooled_dim))
        self.gate_output.build((None, None, self._gate_hidden_dim))
        self.alpha = self.add_weight(name="alpha", shape=(), initializer="zeros")
        self.built = True

    def _check_inputs(self, text_hidden, vision_update, pooled_image):
        for name, tensor in (("text_hidden", text_hidden), ("vision_update", vision_update)):
            shape = tuple(tensor.shape)
            if len(shape) != 3 or shape[-1] not in (None, self.hidden_dim):
                raise ValueError(
                    f"`{name}` must have shape (batch, length, {self.hidden_dim}). "
                    f"Received: {name}.shape={shape}"
                )
        shape = tuple(pooled_image.shape)
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[1] not in (None, 1)):
            raise ValueError(
                "`pooled_image` must have shape (batch, pooled_dim) or (batch, 1, pooled_dim)."
                f" Received: pooled_image.shape={shape}"
            )

    def compute_gate(self, text_hidden, pooled_image):
        """Per-token gate `(batch, length, 1)`: `tanh(alpha) * sigmoid(mlp(...))`."""
        if len(pooled_image.shape) == 3:
            pooled_image = pooled_image[:, 0]
        image = self.image_norm(pooled_image)[:, None, :]
        text = self.text_norm(text_hidden)
        image = ops.broadcast_to(
            image, (ops.shape(text)[0], ops.shape(text)[1], ops.shape(image)[-1])
        )
        features = ops.concatenate([text, ops.cast(image, text.dtype)], axis=-1)
        hidden = keras.activations.gelu(self.gate_hidden(features), approximate=True)
        token_gate = ops.sigmoid(self.gate_output(hidden))
        return ops.tanh(ops.cast(self.alpha, token_gate.dtype)) * token_gate

    def call(self, text_hidden, vision_update, pooled_image, image_present=None):
        self._check_inputs(text_hidden, vision_update, pooled_image)
        gate = self.compute_gate(text_hidden, pooled_image)
        output = text_hidden + ops.cast(gate, text_hidden.dtype) * vision_update
        return _keep_rows(image_present, output, text_hidden)

    def compute_output_shape(
        self, text_hidden_shape, vision_update_shape=None, pooled_image_shape=None
    ):
        return text_hidden_shape

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "gate_hidden_dim": self.gate_hidden_dim})
        return config


@keras.saving.register_keras_serializable(package="vishwam_keras")
class GatedCrossAttentionBlock(keras.layers.Layer):
    """Flamingo-style gated cross-attention block, an identity at initialisation.

    `x = x + gate_attn * cross_attention(rms(x), vision_tokens)`, then
    `x = x + tanh(alpha_ffn) * ffn(rms(x))` (Alayrac et al., 2022). `gate_attn` is
    `tanh(alpha_attn)`, or an `AdaptiveModalityFusion` per-token gate when
    `use_adaptive_gate`; every alpha starts at zero, so the block starts as the identity
    and its first training step opens the gates. Rows without an image are returned
    unchanged.

    Args:
        hidden_dim: int. Width of the text stream.
        num_heads: int. Cross-attention query heads.
        head_dim: int. Width of each head.
        intermediate_dim: int. Width of the gated feed-forward network.
        use_adaptive_gate: bool. Use `AdaptiveModalityFusion` for the attention gate.
            Defaults to `False`.
        num_key_value_heads: `None` or int. Defaults to `num_heads`.
        vision_dim: `None` or int. Width of the vision tokens. Defaults to `hidden_dim`.
        gate_hidden_dim: `None` or int. Hidden width of the adaptive gate MLP.
        use_query_key_norm: bool. Defaults to `True`.
        layer_norm_epsilon: float. Defaults to `1e-6`.
        attention_implementation: `None` or an implementation name. Defaults to `None`.

    Call arguments:
        x: tensor `(batch, length, hidden_dim)`.
        vision_tokens: tensor `(batch, vision_length, vision_dim)`.
        vision_mask: optional bool tensor `(batch, vision_length)`, True for real tokens.
        pooled_image: optional tensor `(batch, pooled_dim)` for the adaptive gate.
            Defaults to the masked mean of `vision_tokens`.
        image_present: optional bool tensor `(batch,)`. Defaults to "any vision token is
            valid" when `vision_mask` is given, else every row.

    Example:
    >>> block = GatedCrossAttentionBlock(hidden_dim=16, num_heads=2, head_dim=8,
    ...                                  intermediate_dim=32)
    >>> x = keras.random.normal((2, 5, 16))
    >>> bool(keras.ops.all(block(x, keras.random.normal((2, 3, 16))) == x))
    True
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        head_dim,
        intermediate_dim,
        use_adaptive_gate=False,
        num_key_value_heads=None,
        vision_dim=None,
        gate_hidden_dim=None,
        use_query_key_norm=True,
        layer_norm_epsilon=1e-6,
        attention_implementation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("intermediate_dim", intermediate_dim)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.use_adaptive_gate = use_adaptive_gate
        self.num_key_value_heads = num_key_value_heads
        self.vision_dim = vision_dim
        self.gate_hidden_dim = gate_hidden_dim
        self.use_query_key_norm = use_query_key_norm
        self.layer_norm_epsilon = layer_norm_epsilon
        self.attention_implementation = attention_implementation

        self.attention_norm = RMSNorm(
            layer_norm_epsilon, name="attention_norm", dtype=self.dtype_policy
        )
        self.cross_attention = CrossModalAttention(
            hidden_dim,
            num_heads,
            head_dim,
            num_key_value_heads=num_key_value_heads,
            vision_dim=vision_dim,
            use_query_key_norm=use_query_key_norm,
            attention_implementation=attention_implementation,
            name="cross_attention",
            dtype=self.dtype_policy,
        )
        if use_adaptive_gate:
            self.fusion = AdaptiveModalityFusion(
                hidden_dim, gate_hidden_dim, name="fusion", dtype=self.dtype_policy
            )
        self.ffn_norm = RMSNorm(layer_norm_epsilon, name="ffn_norm", dtype=self.dtype_policy)
        self.ffn = GatedFeedForward(
            hidden_dim, intermediate_dim, name="ffn", dtype=self.dtype_policy
        )

    def build(self, x_shape, vision_tokens_shape=None, pooled_image_shape=None):
        vision_dim = self.vision_dim or self.hidden_dim
        text_shape = (None, None, self.hidden_dim)
        self.attention_norm.build(text_shape)
        self.cross_attention.build(text_shape, (None, None, vision_dim))
        if self.use_adaptive_gate:
            pooled_dim = vision_dim if pooled_image_shape is None else pooled_image_shape[-1]
            self.fusion.build(text_shape, text_shape, (None, pooled_dim))
        else:
            self.attention_alpha = self.add_weight(
                name="attention_alpha", shape=(), initializer="zeros"
            )
        self.ffn_norm.build(text_shape)
        self.ffn.build(text_shape)
        self.ffn_alpha = self.add_weight(name="ffn_alpha", shape=(), initializer="zeros")
        self.built = True

    def call(
        self, x, vision_tokens, vision_mask=None, pooled_image=None, image_present=None,
        training=None,
    ):
        if vision_mask is not None:
            vision_mask = ops.cast(vision_mask, "bool")
            if image_present is None:
                image_present = ops.any(vision_mask, axis=-1)
        update = self.cross_attention(
            self.attention_norm(x), vision_tokens, vision_mask=vision_mask
        )
        if self.use_adaptive_gate:
            if pooled_image is None:
                pooled_image = masked_mean(vision_tokens, vision_mask)
            hidden = self.fusion(x, update, pooled_image)
        else:
            hidden = x + ops.tanh(ops.cast(self.attention_alpha, x.dtype)) * update
        ffn_gate = ops.tanh(ops.cast(self.ffn_alpha, x.dtype))
        hidden = hidden + ffn_gate * self.ffn(self.ffn_norm(hidden))
        return _keep_rows(image_present, hidden, x)

    def compute_output_shape(self, x_shape, vision_tokens_shape=None, pooled_image_shape=None):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "intermediate_dim": self.intermediate_dim,
                "use_adaptive_gate": self.use_adaptive_gate,
                "num_key_value_heads": self.num_key_value_heads,
                "vision_dim": self.vision_dim,
                "gate_hidden_dim": self.gate_hidden_dim,
                "use_query_key_norm": self.use_query_key_norm,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "attention_implementation": self.attention_implementation,
            }
        )
        return config
