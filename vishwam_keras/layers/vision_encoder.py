"""SigLIP vision encoder: patch embedding, pre-norm ViT blocks, MAP/average pooling, projector.

First stage of the image path: images -> patch tokens -> N pooled tokens -> text width.
"""

import math

import keras
from keras import ops

from vishwam_keras.checks import check_int
from vishwam_keras.layers.attention.kernels import dot_product_attention
from vishwam_keras.layers.normalization import RMSNorm

POOLING_MODES = ("map", "avg", None)


def _check_heads(hidden_dim, num_heads):
    if hidden_dim % num_heads:
        raise ValueError(
            "`num_heads` must divide `hidden_dim`. Received: "
            f"hidden_dim={hidden_dim}, num_heads={num_heads}"
        )


def _fold_leading(inputs, inner_rank):
    """Merge all axes before the last `inner_rank` into one batch axis.

    Returns the folded tensor and the leading dims (static ints where known) needed
    to unfold an output of the same leading structure.
    """
    outer_rank = len(inputs.shape) - inner_rank
    if outer_rank == 1:
        return inputs, None
    leading = [
        dim if dim is not None else ops.shape(inputs)[axis]
        for axis, dim in enumerate(inputs.shape[:outer_rank])
    ]
    inner = tuple(inputs.shape[outer_rank:])
    inner = tuple(
        dim if dim is not None else ops.shape(inputs)[outer_rank + i]
        for i, dim in enumerate(inner)
    )
    return ops.reshape(inputs, (-1,) + inner), leading[1:]


def _unfold_leading(outputs, leading):
    if leading is None:
        return outputs
    return ops.reshape(outputs, (-1, *leading) + tuple(outputs.shape[1:]))


@keras.saving.register_keras_serializable(package="vishwam_keras")
class VisionAttention(keras.layers.Layer):
    """Bidirectional multi-head attention with biases, as in ViT/SigLIP.

    Self-attention when called with one input; cross-attention (queries from the
    first input, keys and values from the second) otherwise. Scores go through
    `vishwam_keras.layers.attention.kernels.dot_product_attention` with `causal=False`.

    Args:
        hidden_dim: int. Width of the inputs and the output.
        num_heads: int. Number of heads; must divide `hidden_dim`.
        dropout: float. Dropout on the output in training. Defaults to `0.0`.

    Call arguments:
        query_inputs: tensor `(batch, q_len, hidden_dim)`.
        key_value_inputs: optional tensor `(batch, kv_len, hidden_dim)`. Defaults to
            `query_inputs`.
        training: bool.

    Example:
    >>> attention = VisionAttention(hidden_dim=16, num_heads=2)
    >>> tuple(attention(keras.ops.ones((2, 4, 16))).shape)
    (2, 4, 16)
    """

    def __init__(self, hidden_dim, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_int("hidden_dim", hidden_dim)
        check_int("num_heads", num_heads)
        _check_heads(hidden_dim, num_heads)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.dropout = dropout

        def projection(name):
            return keras.layers.EinsumDense(
                "btd,dnh->btnh",
                (None, num_heads, self.head_dim),
                bias_axes="nh",
                name=name,
                dtype=self.dtype_policy,
            )

        self.query_dense = projection("query")
        self.key_dense = projection("key")
        self.value_dense = projection("value")
        self.output_dense = keras.layers.EinsumDense(
            "btnh,nhd->btd", (None, hidden_dim), bias_axes="d", name="attention_output",
            dtype=self.dtype_policy,
        )
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, query_inputs_shape, key_value_inputs_shape=None):
        key_value_inputs_shape = key_value_inputs_shape or query_inputs_shape
        self.query_dense.build(query_inputs_shape)
        self.key_dense.build(key_value_inputs_shape)
        self.value_dense.build(key_value_inputs_shape)
        self.output_dense.build(
            (query_inputs_shape[0], query_inputs_shape[1], self.num_heads, self.head_dim)
        )
        self.built = True

    def call(self, query_inputs, key_value_inputs=None, training=None):
        if key_value_inputs is None:
            key_value_inputs = query_inputs
        attended = dot_product_attention(
            self.query_dense(query_inputs),
            self.key_dense(key_value_inputs),
            self.value_dense(key_value_inputs),
            causal=False,
            scale=self.head_dim**-0.5,
        )
        return self.dropout_layer(self.output_dense(attended), training=training)

    def compute_output_shape(self, query_inputs_shape, key_value_inputs_shape=None):
        return tuple(query_inputs_shape[:-1]) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"hidden_dim": self.hidden_dim, "num_heads": self.num_heads, "dropout": self.dropout}
        )
        return config


@keras.saving.register_keras_serializable(package="vishwam_keras")
class VisionMLP(keras.layers.Layer):
    """ViT MLP: `Dense(intermediate_dim) -> gelu(approximate=True) -> Dense(hidden_dim)`.

    Args:
        hidden_dim: int. Input and output width.
        intermediate_dim: int. Hidden width.
        dropout: float. Dropout after the activation and on the output. Defaults to `0.0`.

    Example:
    >>> mlp = VisionMLP(hidden_dim=8, intermediate_dim=16)
    >>> tuple(mlp(keras.ops.ones((2, 3, 8))).shape)
    (2, 3, 8)
    """

    def __init__(self, hidden_dim, intermediate_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_int("hidden_dim", hidden_dim)
        check_int("intermediate_dim", intermediate_dim)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.fc1 = keras.layers.Dense(intermediate_dim, name="fc1", dtype=self.dtype_policy)
        self.fc2 = keras.layers.Dense(hidden_dim, name="fc2", dtype=self.dtype_policy)
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(self, inputs, training=None):
        hidden = keras.activations.gelu(self.fc1(inputs), approximate=True)
        hidden = self.dropout_layer(hidden, training=training)
        return self.dropout_layer(self.fc2(hidden), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="vishwam_keras")
class VisionEncoderBlock(keras.layers.Layer):
    """Pre-norm ViT block: `x + attn(LN(x))`, then `x + mlp(LN(x))`.

    Args:
        hidden_dim: int. Token width.
        num_heads: int. Attention heads; must divide `hidden_dim`.
        intermediate_dim: int. MLP hidden width.
        layer_norm_epsilon: float. Defaults to `1e-6`.
        dropout: float. Defaults to `0.0`.

    Example:
    >>> block = VisionEncoderBlock(hidden_dim=16, num_heads=2, intermediate_dim=32)
    >>> tuple(block(keras.ops.ones((2, 4, 16))).shape)
    (2, 4, 16)
    """

    def __init__(
        self, hidden_dim, num_heads, intermediate_dim, layer_norm_epsilon=1e-6, dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="attention_norm", dtype=self.dtype_policy
        )
        self.attention = VisionAttention(
            hidden_dim, num_heads, dropout, name="attention", dtype=self.dtype_policy
        )
        self.mlp_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="mlp_norm", dtype=self.dtype_policy
        )
        self.mlp = VisionMLP(
            hidden_dim, intermediate_dim, dropout, name="mlp", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        for layer in (self.attention_norm, self.attention, self.mlp_norm, self.mlp):
            layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs + self.attention(self.attention_norm(inputs), training=training)
        return x + self.mlp(self.mlp_norm(x), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="vishwam_keras")
class MultiheadAttentionPooling(keras.layers.Layer):
    """Multihead attention pooling (MAP), big_vision's `MAPHead` (Zhai et al., 2022).

    `num_probes` learned probe vectors cross-attend to the tokens; the result goes
    through `x + mlp(LN(x))`. With one probe this is SigLIP's pooling head.

    Args:
        hidden_dim: int. Token width.
        num_heads: int. Attention heads; must divide `hidden_dim`.
        intermediate_dim: int. MLP hidden width.
        num_probes: int. Number of learned probes, i.e. of output tokens. Defaults to `1`.
        layer_norm_epsilon: float. Defaults to `1e-6`.

    Call arguments:
        inputs: tensor `(batch, num_tokens, hidden_dim)`.

    Returns:
        Tensor `(batch, num_probes, hidden_dim)`.

    Example:
    >>> head = MultiheadAttentionPooling(hidden_dim=16, num_heads=2, intermediate_dim=32)
    >>> tuple(head(keras.ops.ones((2, 9, 16))).shape)
    (2, 1, 16)
    """

    def __init__(
        self, hidden_dim, num_heads, intermediate_dim, num_probes=1, layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("num_probes", num_probes)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_probes = num_probes
        self.layer_norm_epsilon = layer_norm_epsilon
        self.attention = VisionAttention(
            hidden_dim, num_heads, name="attention", dtype=self.dtype_policy
        )
        self.mlp_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="mlp_norm", dtype=self.dtype_policy
        )
        self.mlp = VisionMLP(hidden_dim, intermediate_dim, name="mlp", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.probe = self.add_weight(
            name="probe",
            shape=(1, self.num_probes, self.hidden_dim),
            initializer="glorot_uniform",
        )
        probe_shape = (input_shape[0], self.num_probes, self.hidden_dim)
        self.attention.build(probe_shape, input_shape)
        self.mlp_norm.build(probe_shape)
        self.mlp.build(probe_shape)
        self.built = True

    def call(self, inputs, training=None):
        batch_size = ops.shape(inputs)[0]
        probes = ops.broadcast_to(
            ops.cast(self.probe, inputs.dtype), (batch_size, self.num_probes, self.hidden_dim)
        )
        x = self.attention(probes, inputs, training=training)
        return x + self.mlp(self.mlp_norm(x), training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_probes, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "num_probes": self.num_probes,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="vishwam_keras")
class SigLIPVisionEncoder(keras.layers.Layer):
    """SigLIP ViT image encoder with a pooling head and a projector to the text width.

    Images are cut into `patch_size` x `patch_size` patches by a strided convolution,
    given learned position embeddings and passed through `num_layers` pre-norm ViT
    blocks and a final LayerNorm (Zhai et al., 2023, "Sigmoid Loss for Language Image
    Pre-Training"). The patch tokens are then pooled:

    - `"map"`: multihead attention pooling with `num_pooled_tokens` learned probes
      (big_vision's `MAPHead`);
    - `"avg"`: the patch grid is average-pooled to a `sqrt(n) x sqrt(n)` grid,
      `n = num_pooled_tokens` (Gemma 3 pools 64 x 64 patches to 16 x 16 = 256 tokens);
    - `None`: every patch token is kept.

    Finally each token is projected to `output_dim` by RMSNorm and a bias-free Dense,
    as Gemma 3's multimodal projector does.

    Args:
        image_size: int. Height and width of the (square) input images.
        patch_size: int. Side of a patch; must divide `image_size`.
        hidden_dim: int. Width of the ViT.
        num_layers: int. Number of ViT blocks.
        num_heads: int. Attention heads; must divide `hidden_dim`.
        intermediate_dim: int. MLP hidden width (also used by the MAP head).
        output_dim: int. Width of the output tokens (the text model width).
        pooling: `"map"`, `"avg"` or `None`. Defaults to `"map"`.
        num_pooled_tokens: int. For `"map"`, the number of learned probes; for `"avg"`,
            the number of output tokens, a perfect square whose root divides the patch
            grid side. Ignored for `None`. Defaults to `1`.
        num_channels: int. Channels of the input images. Defaults to `3`.
        layer_norm_epsilon: float. Defaults to `1e-6`.
        dropout: float. Dropout in the ViT blocks in training. Defaults to `0.0`.

    Call arguments:
        images: float tensor `(batch, image_size, image_size, num_channels)`, already
            normalised (see `VishwamImageConverter`), or `(batch, num_images, ...)`.
        training: bool.

    Returns:
        Tensor `(batch, num_output_tokens, output_dim)`, or
        `(batch, num_images, num_output_tokens, output_dim)` for rank-5 input.

    Example:
    >>> encoder = SigLIPVisionEncoder(
    ...     image_size=16, patch_size=4, hidden_dim=16, num_layers=1, num_heads=2,
    ...     intermediate_dim=32, output_dim=24, pooling="avg", num_pooled_tokens=4)
    >>> tuple(encoder(keras.ops.ones((2, 16, 16, 3))).shape)
    (2, 4, 24)
    >>> tuple(encoder(keras.ops.ones((2, 3, 16, 16, 3))).shape)
    (2, 3, 4, 24)
    """

    def __init__(
        self,
        image_size,
        patch_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        output_dim,
        pooling="map",
        num_pooled_tokens=1,
        num_channels=3,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        **kwargs,
    ):
        kwargs.setdefault("name", "vision_encoder")  # curriculum patterns match this name
        super().__init__(**kwargs)
        self._validate_args(
            image_size, patch_size, hidden_dim, num_layers, num_heads, intermediate_dim,
            output_dim, pooling, num_pooled_tokens, num_channels, dropout,
        )
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.output_dim = output_dim
        self.pooling = pooling
        self.num_pooled_tokens = num_pooled_tokens
        self.num_channels = num_channels
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout

        self.patch_embedding = keras.layers.Conv2D(
            hidden_dim,
            kernel_size=patch_size,
            strides=patch_size,
            padding="valid",
            data_format="channels_last",
            name="patch_embedding",
            dtype=self.dtype_policy,
        )
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.blocks = [
            VisionEncoderBlock(
                hidden_dim, num_heads, intermediate_dim, layer_norm_epsilon, dropout,
                name=f"block_{i}", dtype=self.dtype_policy,
            )
            for i in range(num_layers)
        ]
        self.encoder_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="encoder_norm", dtype=self.dtype_policy
        )
        if pooling == "map":
            self.map_head = MultiheadAttentionPooling(
                hidden_dim, num_heads, intermediate_dim, num_pooled_tokens,
                layer_norm_epsilon, name="map_head", dtype=self.dtype_policy,
            )
        self.projection_norm = RMSNorm(
            layer_norm_epsilon, name="projection_norm", dtype=self.dtype_policy
        )
        self.projection = keras.layers.Dense(
            output_dim, use_bias=False, name="projection", dtype=self.dtype_policy
        )

    @staticmethod
    def _validate_args(
        image_size, patch_size, hidden_dim, num_layers, num_heads, intermediate_dim,
        output_dim, pooling, num_pooled_tokens, num_channels, dropout,
    ):
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("intermediate_dim", intermediate_dim),
            ("output_dim", output_dim),
            ("num_pooled_tokens", num_pooled_tokens),
            ("num_channels", num_channels),
        ):
            check_int(name, value)
        if image_size % patch_size:
            raise ValueError(
                "`patch_size` must divide `image_size`. Received: "
                f"image_size={image_size}, patch_size={patch_size}"
            )
        _check_heads(hidden_dim, num_heads)
        if pooling not in POOLING_MODES:
            raise ValueError(
                f"`pooling` must be one of {POOLING_MODES}. Received: pooling={pooling!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        if pooling == "avg":
            grid_side = image_size // patch_size
            pooled_side = math.isqrt(num_pooled_tokens)
            if pooled_side**2 != num_pooled_tokens or grid_side % pooled_side:
                raise ValueError(
                    '`num_pooled_tokens` must be a perfect square n^2 with n dividing the '
                    f'patch grid side ({grid_side}) for pooling="avg". Received: '
                    f"num_pooled_tokens={num_pooled_tokens}, image_size={image_size}, "
                    f"patch_size={patch_size}"
                )

    @property
    def grid_size(self):
        """Patches along each side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self):
        return self.grid_size**2

    @property
    def num_output_tokens(self):
        """Tokens per image in the output: `num_pooled_tokens`, or `num_patches` unpooled."""
        return self.num_patches if self.pooling is None else self.num_pooled_tokens

    def build(self, images_shape=None):
        token_shape = (None, self.num_patches, self.hidden_dim)
        self.patch_embedding.build((None, self.image_size, self.image_size, self.num_channels))
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(self.num_patches, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.hidden_dim**-0.5),
        )
        for block in self.blocks:
            block.build(token_shape)
        self.encoder_norm.build(token_shape)
        if self.pooling == "map":
            self.map_head.build(token_shape)
        self.projection_norm.build((None, self.num_output_tokens, self.hidden_dim))
        self.projection.build((None, self.num_output_tokens, self.hidden_dim))
        self.built = True

    def _check_images(self, images):
        shape = tuple(images.shape)
        expected = (self.image_size, self.image_size, self.num_channels)
        if len(shape) not in (4, 5) or any(
            got is not None and got != want for got, want in zip(shape[-3:], expected)
        ):
            raise ValueError(
                "`images` must have shape (batch, height, width, channels) or "
                f"(batch, num_images, height, width, channels) with (height, width, channels)"
                f" = {expected}. Received: images.shape={shape}"
            )

    def _check_tokens(self, tokens, name, num_tokens):
        shape = tuple(tokens.shape)
        if len(shape) not in (3, 4) or any(
            got is not None and got != want
            for got, want in zip(shape[-2:], (num_tokens, self.hidden_dim))
        ):
            raise ValueError(
                f"`{name}` must have shape (batch, [num_images,] {num_tokens}, "
                f"{self.hidden_dim}). Received: {name}.shape={shape}"
            )

    def _build_if_needed(self):
        if not self.built:
            self.build()

    def encode_patches(self, images, training=None):
        """Images -> patch tokens `(batch, [num_images,] num_patches, hidden_dim)`.

        The ViT output after the final LayerNorm, before pooling and projection.
        """
        self._check_images(images)
        self._build_if_needed()
        images, leading = _fold_leading(images, inner_rank=3)
        x = self.patch_embedding(images)
        x = ops.reshape(x, (-1, self.num_patches, self.hidden_dim))
        x = x + ops.cast(self.position_embedding, x.dtype)[None]
        x = self.embedding_dropout(x, training=training)
        for block in self.blocks:
            x = block(x, training=training)
        x = self.encoder_norm(x)
        return _unfold_leading(x, leading)

    def _average_pool(self, tokens):
        side = math.isqrt(self.num_pooled_tokens)
        window = self.grid_size // side
        x = ops.reshape(tokens, (-1, side, window, side, window, self.hidden_dim))
        x = ops.mean(x, axis=(2, 4))
        return ops.reshape(x, (-1, self.num_pooled_tokens, self.hidden_dim))

    def pool(self, patch_tokens, training=None):
        """Patch tokens -> `(batch, [num_images,] num_output_tokens, hidden_dim)`."""
        self._check_tokens(patch_tokens, "patch_tokens", self.num_patches)
        self._build_if_needed()
        if self.pooling is None:
            return patch_tokens
        tokens, leading = _fold_leading(patch_tokens, inner_rank=2)
        if self.pooling == "map":
            pooled = self.map_head(tokens, training=training)
        else:
            pooled = self._average_pool(tokens)
        return _unfold_leading(pooled, leading)

    def project(self, tokens):
        """Pooled tokens `(..., hidden_dim)` -> `(..., output_dim)`: RMSNorm + Dense."""
        self._build_if_needed()
        return self.projection(self.projection_norm(tokens))

    def call(self, images, training=None):
        self._check_images(images)
        images, leading = _fold_leading(images, inner_rank=3)
        tokens = self.pool(self.encode_patches(images, training=training), training=training)
        return _unfold_leading(self.project(tokens), leading)

    def compute_output_shape(self, images_shape):
        return tuple(images_shape[:-3]) + (self.num_output_tokens, self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "output_dim": self.output_dim,
                "pooling": self.pooling,
                "num_pooled_tokens": self.num_pooled_tokens,
                "num_channels": self.num_channels,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
            }
        )
        return config
