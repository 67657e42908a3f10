"""VishwamBackbone: token embedding, the local/global decoder stack, final norm.

The functional core every task model wraps; its `token_embedding` is tied to the output logits.
"""

import keras
import numpy as np
from keras import ops
from keras_hub.models import Backbone

from vishwam_keras.checks import check_int, static_dim
from vishwam_keras.layers.decoder_block import DecoderBlock
from vishwam_keras.layers.fusion import GatedCrossAttentionBlock
from vishwam_keras.layers.interleave import ImageEmbedding, ImageTokenInterleave
from vishwam_keras.layers.normalization import RMSNorm
from vishwam_keras.models.presets import NamedPresetMixin

LAYER_TYPES = ("local", "global")
FUSION_TYPES = ("interleave", "cross_attention", "adaptive_gate")
DEFAULT_IMAGE_TOKEN_ID = 6  # `<image_soft_token>` in the bundled vocabulary


def default_layer_types(num_layers, sliding_window_pattern):
    """Gemma 3's interleave: every `sliding_window_pattern`-th layer is global, the rest local."""
    return [
        "global" if (i + 1) % sliding_window_pattern == 0 else "local"
        for i in range(num_layers)
    ]


def _static_shape(value):
    shape = getattr(value, "shape", None)
    if shape is None:
        shape = np.shape(value)
    # Symbolic dimensions (jax2tf export, tf.function) are unknown here, not ints.
    return tuple(static_dim(d) for d in shape)


def _is_concrete(value):
    return isinstance(value, (np.ndarray, list, tuple)) or (
        ops.is_tensor(value) and not keras.backend.is_keras_tensor(value)
    )


def _concrete_numpy(value):
    """`value` as a NumPy array, or `None` when it is traced (nothing to check yet)."""
    if not _is_concrete(value):
        return None
    try:
        return np.asarray(ops.convert_to_numpy(value))
    except Exception:  # A traced tensor inside a compiled function.
        return None


def check_token_ids(token_ids, vocabulary_size, name="token_ids"):
    """Raise a ValueError for concrete ids outside `[0, vocabulary_size)`; skip traced ones."""
    array = _concrete_numpy(token_ids)
    if array is None:
        return
    if array.size == 0:
        raise ValueError(f"`{name}` is empty. Received: {name}.shape={array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integers. Received dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= vocabulary_size:
        raise ValueError(
            f"`{name}` must lie in [0, {vocabulary_size}) (the vocabulary). "
            f"Received values in [{low}, {high}]"
        )


@keras.saving.register_keras_serializable(package="vishwam_keras")
class VishwamBackbone(NamedPresetMixin, Backbone):
    """A Gemma-3-style decoder: GQA, QK-norm, RoPE, interleaved local/global attention.

    Tokens are embedded and scaled by `sqrt(hidden_dim)`, run through `num_layers`
    `DecoderBlock`s (local layers attend within `sliding_window_size`, global layers to
    the whole prefix) and a final RMSNorm. The output is the final hidden state; the
    tied `token_embedding` turns it into logits in `VishwamCausalLM`. With a vision
    encoder the output is a dict: `sequence_output`, `image_embedding` (the mean vision
    token per row), `image_present`, and `vision_tokens` / `vision_mask` (every image's
    tokens in order, for heads that need to know where things are).

    Args:
        vocabulary_size: int. Size of the token vocabulary.
        num_layers: int. Number of decoder blocks.
        num_query_heads: int. Query heads per attention layer.
        num_key_value_heads: int. Key/value heads; must divide `num_query_heads`.
        hidden_dim: int. Model width.
        intermediate_dim: int. Feed-forward width.
        head_dim: int. Width of each attention head.
        sliding_window_size: int. Window of local layers. Defaults to `512`.
        sliding_window_pattern: int. Every n-th layer is global. Defaults to `6`
            (5 local : 1 global, as Gemma 3).
        layer_types: `None` or list of `"local"` / `"global"`, one per layer; overrides
            `sliding_window_pattern`.
        use_query_key_norm: bool. Defaults to `True`.
        attention_logit_soft_cap: `None` or float. Defaults to `None`.
        final_logit_soft_cap: `None` or float. Soft cap of the output logits. Defaults to `None`.
        query_pre_attn_scalar: `None` or float. Defaults to `head_dim`.
        local_rope_max_wavelength: int. Defaults to `10000`.
        global_rope_max_wavelength: int. Defaults to `1000000`.
        global_rope_scaling_factor: float. Defaults to `8.0`.
        layer_norm_epsilon: float. Defaults to `1e-6`.
        dropout: float. Defaults to `0.0`.
        attention_implementation: `None` or an implementation name for
            `vishwam_keras.ops.dot_product_attention`. Defaults to `None` (automatic).
        vision_encoder: `None` (a text model) or a `SigLIPVisionEncoder` whose
            `output_dim` is `hidden_dim`. With it the model takes `images`
            `(batch, num_images, H, W, C)` and `image_mask` `(batch, num_images)` inputs.
        fusion_type: how images reach the text: `"interleave"` (vision tokens replace
            `<image_soft_token>` placeholders, bidirectional inside each image),
            `"cross_attention"` (gated cross-attention blocks after the decoder blocks in
            `cross_attn_layers`) or `"adaptive_gate"` (both, the cross-attention path gated
            by `AdaptiveModalityFusion`). Defaults to `"interleave"`.
        cross_attn_layers: `None` or list of decoder block indices followed by a gated
            cross-attention block. Defaults to every 4th block when needed.
        image_token_id: int. Id of the image placeholder token. Defaults to `6`.
        attention_types: `None` or a list with one entry per layer of `"gqa"`, `"flash"`,
            `"multi_scale"` or `"sparse"` (see `DecoderBlock`). Defaults to all `"gqa"`.
        attention_kwargs: `None` or a list (one dict or None per layer) of extra arguments
            for those layers, e.g. `{"window_sizes": [64, 256, -1, -1]}`.
        dtype: dtype or `keras.DTypePolicy`. Defaults to the global policy.

    Example:
    >>> backbone = VishwamBackbone(vocabulary_size=100, num_layers=2, num_query_heads=4,
    ...     num_key_value_heads=2, hidden_dim=32, intermediate_dim=64, head_dim=8,
    ...     sliding_window_size=4)
    >>> x = {"token_ids": np.ones((1, 6), "int32"), "padding_mask": np.ones((1, 6), "int32")}
    >>> tuple(backbone(x).shape)
    (1, 6, 32)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_query_heads,
        num_key_value_heads,
        hidden_dim,
        intermediate_dim,
        head_dim,
        sliding_window_size=512,
        sliding_window_pattern=6,
        layer_types=None,
        use_query_key_norm=True,
        attention_logit_soft_cap=None,
        final_logit_soft_cap=None,
        query_pre_attn_scalar=None,
        local_rope_max_wavelength=10000,
        global_rope_max_wavelength=1000000,
        global_rope_scaling_factor=8.0,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        attention_implementation=None,
        vision_encoder=None,
        fusion_type="interleave",
        cross_attn_layers=None,
        image_token_id=DEFAULT_IMAGE_TOKEN_ID,
        attention_types=None,
        attention_kwargs=None,
        dtype=None,
        **kwargs,
    ):
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("num_layers", num_layers),
            ("num_query_heads", num_query_heads),
            ("num_key_value_heads", num_key_value_heads),
            ("hidden_dim", hidden_dim),
            ("intermediate_dim", intermediate_dim),
            ("head_dim", head_dim),
            ("sliding_window_size", sliding_window_size),
            ("sliding_window_pattern", sliding_window_pattern),
        ):
            check_int(name, value)
        if num_query_heads % num_key_value_heads:
            raise ValueError(
                "`num_key_value_heads` must divide `num_query_heads`. Received: "
                f"num_query_heads={num_query_heads}, num_key_value_heads={num_key_value_heads}"
            )
        if layer_types is None:
            layer_types = default_layer_types(num_layers, sliding_window_pattern)
        layer_types = list(layer_types)
        if len(layer_types) != num_layers or any(t not in LAYER_TYPES for t in layer_types):
            raise ValueError(
                f"`layer_types` must list {num_layers} entries (num_layers), each one of "
                f"{LAYER_TYPES}. Received: layer_types={layer_types!r}"
            )

        if fusion_type not in FUSION_TYPES:
            raise ValueError(
                f"`fusion_type` must be one of {FUSION_TYPES}. Received: fusion_type={fusion_type!r}"
            )
        if vision_encoder is not None and vision_encoder.output_dim != hidden_dim:
            raise ValueError(
                "The vision encoder's `output_dim` must equal `hidden_dim`. Received: "
                f"output_dim={vision_encoder.output_dim}, hidden_dim={hidden_dim}"
            )
        uses_cross_attention = vision_encoder is not None and fusion_type != "interleave"
        if uses_cross_attention and cross_attn_layers is None:
            cross_attn_layers = list(range(3, num_layers, 4)) or [num_layers - 1]
        cross_attn_layers = sorted(cross_attn_layers or []) if uses_cross_attention else []
        bad = [i for i in cross_attn_layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(
                f"`cross_attn_layers` must be decoder indices in [0, {num_layers}). "
                f"Received: cross_attn_layers={cross_attn_layers!r}"
            )

        attention_types = list(attention_types or ["gqa"] * num_layers)
        attention_kwargs = list(attention_kwargs or [None] * num_layers)
        if len(attention_types) != num_layers or len(attention_kwargs) != num_layers:
            raise ValueError(
                f"`attention_types` and `attention_kwargs` need {num_layers} entries (num_layers). "
                f"Received: {len(attention_types)} and {len(attention_kwargs)}"
            )

        # === Layers ===
        self.vision_encoder = vision_encoder
        self.token_embedding = keras.layers.ReversibleEmbedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            tie_weights=True,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=hidden_dim**-0.5),
            logit_soft_cap=final_logit_soft_cap,
            dtype=dtype,
            name="token_embedding",
        )
        self.transformer_layers = []
        for i, layer_type in enumerate(layer_types):
            local = layer_type == "local"
            self.transformer_layers.append(
                DecoderBlock(
                    hidden_dim=hidden_dim,
                    intermediate_dim=intermediate_dim,
                    num_query_heads=num_query_heads,
                    num_key_value_heads=num_key_value_heads,
                    head_dim=head_dim,
                    sliding_window_size=sliding_window_size if local else None,
                    use_query_key_norm=use_query_key_norm,
                    attention_logit_soft_cap=attention_logit_soft_cap,
                    rope_max_wavelength=(
                        local_rope_max_wavelength if local else global_rope_max_wavelength
                    ),
                    rope_scaling_factor=1.0 if local else global_rope_scaling_factor,
                    query_pre_attn_scalar=query_pre_attn_scalar,
                    layer_norm_epsilon=layer_norm_epsilon,
                    dropout=dropout,
                    attention_implementation=attention_implementation,
                    attention_type=attention_types[i],
                    attention_kwargs=attention_kwargs[i],
                    dtype=dtype,
                    name=f"decoder_block_{i}",
                )
            )
        self.final_norm = RMSNorm(layer_norm_epsilon, dtype=dtype, name="final_norm")
        self.cross_attention_blocks = {
            i: GatedCrossAttentionBlock(
                hidden_dim=hidden_dim,
                num_heads=num_query_heads,
                head_dim=head_dim,
                intermediate_dim=intermediate_dim,
                use_adaptive_gate=fusion_type == "adaptive_gate",
                num_key_value_heads=num_key_value_heads,
                use_query_key_norm=use_query_key_norm,
                layer_norm_epsilon=layer_norm_epsilon,
                attention_implementation=attention_implementation,
                dtype=dtype,
                name=f"cross_attention_{i}",
            )
            for i in cross_attn_layers
        }
        if vision_encoder is not None:
            self.image_embedding = ImageEmbedding(vision_encoder, dtype=dtype, name="image_embedding")
            self.interleave = ImageTokenInterleave(
                image_token_id, vision_encoder.num_output_tokens, dtype=dtype, name="interleave"
            )

        # === Functional model ===
        inputs = {
            "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            "padding_mask": keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
        }
        if vision_encoder is not None:
            size, channels = vision_encoder.image_size, vision_encoder.num_channels
            inputs["images"] = keras.Input(shape=(None, size, size, channels), name="images")
            inputs["image_mask"] = keras.Input(shape=(None,), dtype="int32", name="image_mask")
        self.fusion_type = fusion_type
        self.cross_attn_layers = cross_attn_layers
        if vision_encoder is None:
            outputs = self.decode(inputs)
        else:
            vision = self.encode_images(inputs["images"], inputs["image_mask"])
            outputs = {
                "sequence_output": self.decode(inputs, vision=vision),
                "image_embedding": vision[2],
                "image_present": vision[3],
                "vision_tokens": vision[0],
                "vision_mask": vision[1],
            }
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.head_dim = head_dim
        self.sliding_window_size = sliding_window_size
        self.sliding_window_pattern = sliding_window_pattern
        self.layer_types = layer_types
        self.use_query_key_norm = use_query_key_norm
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.final_logit_soft_cap = final_logit_soft_cap
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.local_rope_max_wavelength = local_rope_max_wavelength
        self.global_rope_max_wavelength = global_rope_max_wavelength
        self.global_rope_scaling_factor = global_rope_scaling_factor
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.attention_implementation = attention_implementation
        self.image_token_id = image_token_id
        self.attention_types = attention_types
        self.attention_kwargs = attention_kwargs

    @property
    def has_vision(self):
        return self.vision_encoder is not None

    def encode_images(self, images, image_mask, training=None):
        """`(vision_tokens, vision_mask, pooled_image, image_present)`; see `ImageEmbedding`."""
        return self.image_embedding(images, image_mask, training=training)

    def decode(self, inputs, vision=None, training=None, text_only=False):
        """Embeddings -> (images fused) -> decoder blocks -> final norm, without a cache.

        `vision` optionally passes already encoded images (the output of `encode_images`);
        `text_only=True` ignores images entirely (placeholders keep their token embedding).
        """
        token_ids = inputs["token_ids"]
        x = self.embed_tokens(token_ids)
        span_ids = None
        if self.has_vision and not text_only:
            if vision is None:
                vision = self.encode_images(inputs["images"], inputs["image_mask"], training=training)
            if self.fusion_type in ("interleave", "adaptive_gate"):
                x, span_ids = self.interleave(x, token_ids, vision[0])
        for i, block in enumerate(self.transformer_layers):
            x = block(x, padding_mask=inputs["padding_mask"], span_ids=span_ids, training=training)
            if i in self.cross_attention_blocks and not text_only:
                x = self.cross_attention_blocks[i](
                    x, vision[0], vision_mask=vision[1], pooled_image=vision[2],
                    image_present=vision[3], training=training,
                )
        return self.final_norm(x)

    def embed_tokens(self, token_ids):
        """Token embeddings scaled by `sqrt(hidden_dim)`, as Gemma."""
        x = self.token_embedding(token_ids)
        return x * ops.cast(ops.sqrt(float(self.token_embedding.output_dim)), x.dtype)

    def check_inputs(self, inputs):
        """Validate concrete inputs before any compute; traced inputs pass through."""
        if isinstance(inputs, dict):
            if "token_ids" not in inputs:
                raise ValueError(
                    "Backbone inputs must contain `token_ids`. Received keys: "
                    f"{sorted(inputs)}"
                )
            check_token_ids(inputs["token_ids"], self.vocabulary_size)
            pixels = None if inputs.get("images") is None else _concrete_numpy(inputs["images"])
            if pixels is not None and np.issubdtype(pixels.dtype, np.floating):
                if not np.all(np.isfinite(pixels)):
                    raise ValueError(
                        f"`images` holds {int(np.sum(~np.isfinite(pixels)))} NaN or Inf pixel "
                        "values. Clean or drop those images before calling the model."
                    )
            token_ids, padding_mask = inputs["token_ids"], inputs.get("padding_mask")
            if padding_mask is None:
                return
            mask_shape, ids_shape = _static_shape(padding_mask), _static_shape(token_ids)
            if len(mask_shape) != len(ids_shape) or any(
                a is not None and b is not None and a != b for a, b in zip(mask_shape, ids_shape)
            ):
                raise ValueError(
                    "`padding_mask` must have the shape of `token_ids` (batch, length). "
                    f"Received: padding_mask.shape={tuple(mask_shape)}, "
                    f"token_ids.shape={tuple(ids_shape)}"
                )

    @classmethod
    def get_layout_map(
        cls, device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch",
        config=None,
    ):
        """A `keras.distribution.LayoutMap` for model parallelism (see `distribution.py`).

        Args:
            device_mesh: `keras.distribution.DeviceMesh`.
            model_parallel_dim_name, data_parallel_dim_name: mesh axis names.
            config: `None`, a `MultimodalConfig`, a backbone config dict or a preset name.
                With it, head counts that do not divide the model axis are replicated or
                sharded on the hidden dimension; without it heads are not sharded.
        """
        from vishwam_keras.distribution import get_layout_map

        if config is None:
            return get_layout_map(
                device_mesh, model_parallel_dim_name=model_parallel_dim_name,
                data_parallel_dim_name=data_parallel_dim_name,
            )
        return get_layout_map(
            config, device_mesh, model_parallel_dim_name=model_parallel_dim_name,
            data_parallel_dim_name=data_parallel_dim_name,
        )

    def enable_rematerialization(self, enabled=True):
        """Recompute each decoder block's activations in the backward pass (gradient
        checkpointing) instead of keeping them: activation memory falls from one set per
        layer to about one block's, for about a third more compute. Works on JAX,
        TensorFlow and torch through `keras.remat`; decoding with a cache is unaffected.

        Args:
            enabled: bool. Defaults to `True`.
        """
        for block in self.transformer_layers:
            block.rematerialize = bool(enabled)

    def complete_inputs(self, inputs):
        """Fill optional inputs: `padding_mask` (all ones), and for a vision model with no
        `images`, an empty image batch (the encoder is skipped); rank-4 `images` gain an
        image axis and a missing `image_mask` marks every image present."""
        if not isinstance(inputs, dict) or "token_ids" not in inputs:
            return inputs
        # Keras refuses a mix of arrays and tensors in one call: make arrays tensors.
        inputs = {
            key: ops.convert_to_tensor(value) if isinstance(value, (np.ndarray, list)) else value
            for key, value in inputs.items()
        }
        token_ids = inputs["token_ids"]
        if inputs.get("padding_mask") is None:
            inputs["padding_mask"] = ops.ones_like(token_ids, dtype="int32")
        if not self.has_vision:
            inputs.pop("images", None)
            inputs.pop("image_mask", None)
            return inputs
        encoder = self.vision_encoder
        batch = ops.shape(token_ids)[0]
        images = inputs.get("images")
        if images is None:
            size, channels = encoder.image_size, encoder.num_channels
            inputs["images"] = ops.zeros((batch, 0, size, size, channels), dtype=self.compute_dtype)
            inputs["image_mask"] = ops.zeros((batch, 0), dtype="int32")
            return inputs
        if len(images.shape) == 4:
            images = images[:, None]
            inputs["images"] = images
        if len(images.shape) != 5:
            raise ValueError(
                "`images` must have shape (batch, num_images, height, width, channels) or "
                f"(batch, height, width, channels). Received: images.shape={tuple(images.shape)}"
            )
        if inputs.get("image_mask") is None:
            inputs["image_mask"] = ops.ones((batch, ops.shape(images)[1]), dtype="int32")
        return inputs

    def __call__(self, inputs, *args, **kwargs):
        inputs = self.complete_inputs(inputs)
        self.check_inputs(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "head_dim": self.head_dim,
                "sliding_window_size": self.sliding_window_size,
                "sliding_window_pattern": self.sliding_window_pattern,
                "layer_types": self.layer_types,
                "use_query_key_norm": self.use_query_key_norm,
                "attention_logit_soft_cap": self.attention_logit_soft_cap,
                "final_logit_soft_cap": self.final_logit_soft_cap,
                "query_pre_attn_scalar": self.query_pre_attn_scalar,
                "local_rope_max_wavelength": self.local_rope_max_wavelength,
                "global_rope_max_wavelength": self.global_rope_max_wavelength,
                "global_rope_scaling_factor": self.global_rope_scaling_factor,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
                "attention_implementation": self.attention_implementation,
                "vision_encoder": None
                if self.vision_encoder is None
                else keras.layers.serialize(self.vision_encoder),
                "fusion_type": self.fusion_type,
                "cross_attn_layers": self.cross_attn_layers,
                "image_token_id": self.image_token_id,
                "attention_types": self.attention_types,
                "attention_kwargs": self.attention_kwargs,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("vision_encoder") is not None and isinstance(config["vision_encoder"], dict):
            config["vision_encoder"] = keras.layers.deserialize(config["vision_encoder"])
        return super().from_config(config)
