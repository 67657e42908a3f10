"""Weights from KerasHub's Gemma 3 (text, or text and vision) into a `VishwamBackbone` alike.

Interop at the edge of the flow: a converted backbone drops into `VishwamCausalLM` like ours.
"""

import types
import warnings

import keras
import numpy as np


def _check_supported(gemma):
    for flag, why in (
        ("is_embedding_model", "pooling and projection heads"),
        ("use_bidirectional_attention", "bidirectional attention (EmbeddingGemma)"),
    ):
        if getattr(gemma, flag, False):
            raise NotImplementedError(
                f"Gemma3Backbone(`{flag}=True`) adds {why}, which VishwamBackbone does not have."
            )


def _check_expressible(gemma, local_blocks):
    """Gemma 3 options VishwamBackbone cannot express (it has no flag for them)."""
    missing = []
    if not (gemma.use_post_attention_norm and gemma.use_post_ffw_norm):
        missing.append(
            "use_post_attention_norm/use_post_ffw_norm=False: every DecoderBlock applies "
            "post-attention and post-feed-forward RMSNorms (an RMSNorm cannot be an identity)"
        )
    local_scaling = {block.attention.rope_scaling_factor for block in local_blocks}
    if local_scaling - {1.0}:
        missing.append(
            f"local_rope_scaling_factor={sorted(local_scaling)}: local layers always use "
            "rope_scaling_factor=1.0 (VishwamBackbone has only global_rope_scaling_factor)"
        )
    if missing:
        raise NotImplementedError(
            "This Gemma3Backbone cannot be expressed by VishwamBackbone: " + "; ".join(missing)
        )


def _uniform(values, what, default):
    """The one value all layers share (`default` when no layer has it)."""
    values = set(values)
    if len(values) > 1:
        raise NotImplementedError(
            f"Gemma3 layers differ in {what} ({sorted(values)}); VishwamBackbone shares one."
        )
    value = values.pop() if values else default
    return int(value) if float(value).is_integer() else float(value)


def gemma3_text_config(gemma):
    """`VishwamBackbone` arguments for the text stack of a `keras_hub.models.Gemma3Backbone`.

    Read from the decoder blocks where KerasHub fixes a value per layer (window on or off,
    RoPE wavelength and scaling, the query scale), so the result follows what the KerasHub
    model computes rather than what its config says.
    """
    _check_supported(gemma)
    blocks = gemma.transformer_layers
    local = [b for b in blocks if b.attention.use_sliding_window_attention]
    global_ = [b for b in blocks if not b.attention.use_sliding_window_attention]
    _check_expressible(gemma, local)

    # KerasHub's Gemma3DecoderBlock builds its attention with query_head_dim_normalize=True
    # whatever the backbone says, so the scale is 1/sqrt(head_dim) unless a layer says else.
    scalars = {
        b.attention.head_dim
        if b.attention.query_head_dim_normalize
        else gemma.hidden_dim // gemma.num_query_heads
        for b in blocks
    }
    query_pre_attn_scalar = _uniform(scalars, "query scale", gemma.head_dim)
    configured = gemma.hidden_dim // gemma.num_query_heads
    if gemma.query_head_dim_normalize:
        configured = gemma.head_dim
    if query_pre_attn_scalar != configured:
        warnings.warn(
            f"Gemma3Backbone(query_head_dim_normalize={gemma.query_head_dim_normalize}) asks "
            f"for a query scale of 1/sqrt({configured}), but its decoder blocks use "
            f"1/sqrt({query_pre_attn_scalar}) (KerasHub hard-codes query_head_dim_normalize="
            "True in Gemma3DecoderBlock). The conversion follows the blocks.",
            stacklevel=3,
        )
    return dict(
        vocabulary_size=gemma.vocabulary_size,
        num_layers=gemma.num_layers,
        num_query_heads=gemma.num_query_heads,
        num_key_value_heads=gemma.num_key_value_heads,
        hidden_dim=gemma.hidden_dim,
        # Gemma 3 uses gate_dim_reduction=1: gate and up are both (d, intermediate_dim).
        intermediate_dim=int(blocks[0].gating_ffw.kernel.shape[-1]),
        head_dim=gemma.head_dim,
        sliding_window_size=gemma.sliding_window_size,
        layer_types=[
            "local" if b.attention.use_sliding_window_attention else "global" for b in blocks
        ],
        use_query_key_norm=gemma.use_query_key_norm,
        attention_logit_soft_cap=gemma.attention_logit_soft_cap,
        final_logit_soft_cap=gemma.final_logit_soft_cap,
        query_pre_attn_scalar=query_pre_attn_scalar,
        local_rope_max_wavelength=_uniform(
            (b.attention.rope_wavelength for b in local), "local RoPE wavelength", 10000
        ),
        global_rope_max_wavelength=_uniform(
            (b.attention.rope_wavelength for b in global_), "global RoPE wavelength", 1000000
        ),
        global_rope_scaling_factor=float(
            _uniform((b.attention.rope_scaling_factor for b in global_), "global RoPE scaling", 1.0)
        ),
        layer_norm_epsilon=gemma.layer_norm_epsilon,
        dropout=gemma.dropout,
    )


# (ours, theirs, transform) per decoder block. Gemma 3 puts heads first in its q/k/v kernels
# ("btd,ndh->btnh": (heads, d, head_dim)); ours are "btd,dnh->btnh": (d, heads, head_dim).
_HEADS_FIRST_TO_HIDDEN_FIRST = (1, 0, 2)
_BLOCK_WEIGHTS = (
    ("pre_attention_norm.scale", "pre_attention_norm.scale", None),
    ("post_attention_norm.scale", "post_attention_norm.scale", None),
    ("pre_ffw_norm.scale", "pre_ffw_norm.scale", None),
    ("post_ffw_norm.scale", "post_ffw_norm.scale", None),
    ("attention.query_dense.kernel", "attention.query_dense.kernel", _HEADS_FIRST_TO_HIDDEN_FIRST),
    ("attention.key_dense.kernel", "attention.key_dense.kernel", _HEADS_FIRST_TO_HIDDEN_FIRST),
    ("attention.value_dense.kernel", "attention.value_dense.kernel", _HEADS_FIRST_TO_HIDDEN_FIRST),
    ("attention.output_dense.kernel", "attention.output_dense.kernel", None),  # (N, H, d) both
    ("feedforward.gate.kernel", "gating_ffw.kernel", None),  # gelu(gate(x)) * up(x)
    ("feedforward.up.kernel", "gating_ffw_2.kernel", None),
    ("feedforward.down.kernel", "ffw_linear.kernel", None),
)
_QK_NORM_WEIGHTS = (
    ("attention.query_norm.scale", "attention.query_norm.scale", None),
    ("attention.key_norm.scale", "attention.key_norm.scale", None),
)


def _lookup(root, dotted):
    for name in dotted.split("."):
        root = getattr(root, name)
    return root


# A transform is None (copy), a tuple (a transpose) or _RESHAPE: the same values in our
# layout, e.g. a (d, heads * head_dim) Dense kernel as our (d, heads, head_dim) EinsumDense.
_RESHAPE = "reshape"


def _assign(ours, theirs, transform, where):
    value = np.asarray(keras.ops.convert_to_numpy(theirs.value))
    if transform == _RESHAPE and value.size == np.prod(ours.shape):
        value = value.reshape(tuple(ours.shape))
    elif isinstance(transform, tuple):
        value = np.transpose(value, transform)
    if tuple(value.shape) != tuple(ours.shape):
        raise ValueError(
            f"{where}: Gemma3 weight of shape {tuple(theirs.shape)} does not map onto ours "
            f"{tuple(ours.shape)} (transform {transform})"
        )
    ours.assign(value)


def _copy_all(pairs, our_weights, their_weights):
    """Assign every `(ours, theirs, transform, where)` pair, then check that the pairs
    cover `our_weights` and `their_weights` exactly: a leftover on either side is an error."""
    for ours, theirs, transform, where in pairs:
        _assign(ours, theirs, transform, where)
    copied_ours = {id(v) for v, _, _, _ in pairs}
    copied_theirs = {id(v) for _, v, _, _ in pairs}
    left_ours = [v.path for v in our_weights if id(v) not in copied_ours]
    left_theirs = [v.path for v in their_weights if id(v) not in copied_theirs]
    if left_ours or left_theirs:
        raise ValueError(f"Weights not converted. Ours: {left_ours}. Gemma3's: {left_theirs}.")


def _pairs(ours, theirs, table, prefix):
    return [
        (_lookup(ours, our_name), _lookup(theirs, their_name), transform, f"{prefix} {our_name}")
        for our_name, their_name, transform in table
    ]


def _without(weights, excluded):
    excluded = {id(v) for v in (excluded.weights if excluded is not None else [])}
    return [v for v in weights if id(v) not in excluded]


def copy_gemma3_text_weights(gemma, backbone):
    """Copy every text weight of `gemma` into `backbone` (built by `gemma3_text_config`).

    Every weight on both sides is accounted for; a leftover on either side is an error.
    """
    pairs = [
        (backbone.token_embedding.embeddings, gemma.token_embedding.embeddings, None, "embedding")
    ]
    table = _BLOCK_WEIGHTS + (_QK_NORM_WEIGHTS if backbone.use_query_key_norm else ())
    for i, (ours, theirs) in enumerate(zip(backbone.transformer_layers, gemma.transformer_layers)):
        pairs += _pairs(ours, theirs, table, f"decoder_block_{i}")
    pairs.append((backbone.final_norm.scale, gemma.layer_norm.scale, None, "final norm"))
    _copy_all(
        pairs,
        _without(backbone.weights, backbone.vision_encoder),
        _without(gemma.weights, getattr(gemma, "vision_encoder", None)),
    )
    return backbone


# --- vision ------------------------------------------------------------------------------
# Gemma3VisionEncoder is our SigLIPVisionEncoder(pooling="avg"): patch conv + position
# embedding, pre-norm ViT blocks (LayerNorm, attention with biases, gelu-tanh MLP), a final
# LayerNorm, average pooling of the patch grid by `pool_size`, then RMSNorm and a bias-free
# projection to the text width. KerasHub scatters the image tokens to `vision_indices`; we
# put them on the `<img>` placeholders in order, which are the same positions.

_VISION_WEIGHTS = (
    ("patch_embedding.kernel", "image_encoder.vision_embeddings.patch_embedding.kernel", None),
    ("patch_embedding.bias", "image_encoder.vision_embeddings.patch_embedding.bias", None),
    (
        "position_embedding",
        "image_encoder.vision_embeddings.position_embedding.embeddings",
        None,
    ),
    ("encoder_norm.gamma", "image_encoder.encoder_layer_norm.gamma", None),
    ("encoder_norm.beta", "image_encoder.encoder_layer_norm.beta", None),
    ("projection_norm.scale", "vision_output_encoder.vision_soft_embedding_norm.scale", None),
    ("projection.kernel", "vision_output_encoder.vision_input_projection.kernel", None),
)
# Gemma 3's vision attention uses Dense (d, heads * head_dim); ours EinsumDense
# (d, heads, head_dim), with the same head-major split of the last axis.
_VISION_BLOCK_WEIGHTS = (
    ("attention_norm.gamma", "layer_norm_1.gamma", None),
    ("attention_norm.beta", "layer_norm_1.beta", None),
    ("attention.query_dense.kernel", "attn.query_proj.kernel", _RESHAPE),
    ("attention.query_dense.bias", "attn.query_proj.bias", _RESHAPE),
    ("attention.key_dense.kernel", "attn.key_proj.kernel", _RESHAPE),
    ("attention.key_dense.bias", "attn.key_proj.bias", _RESHAPE),
    ("attention.value_dense.kernel", "attn.value_proj.kernel", _RESHAPE),
    ("attention.value_dense.bias", "attn.value_proj.bias", _RESHAPE),
    ("attention.output_dense.kernel", "attn.out_proj.kernel", _RESHAPE),
    ("attention.output_dense.bias", "attn.out_proj.bias", None),
    ("mlp_norm.gamma", "layer_norm_2.gamma", None),
    ("mlp_norm.beta", "layer_norm_2.beta", None),
    ("mlp.fc1.kernel", "mlp_dense_1.kernel", None),
    ("mlp.fc1.bias", "mlp_dense_1.bias", None),
    ("mlp.fc2.kernel", "mlp_dense_2.kernel", None),
    ("mlp.fc2.bias", "mlp_dense_2.bias", None),
)


def _vision_parts(vision):
    """The two layers of the functional `Gemma3VisionEncoder` that hold weights."""
    return types.SimpleNamespace(
        image_encoder=vision.get_layer("image_encoder"),
        vision_output_encoder=vision.get_layer("vision_output_encoder"),
    )


def _check_vision_expressible(gemma, vision, image_token_id):
    parts = _vision_parts(vision)
    grid_side = vision.image_size // vision.patch_size
    tokens_per_image = vision.num_vision_tokens_per_image
    windows = [
        b.attention.sliding_window_size
        for b in gemma.transformer_layers
        if b.attention.use_sliding_window_attention
    ]
    missing = []
    if vision.image_size % vision.patch_size or grid_side % vision.pool_size:
        missing.append(
            f"image_size={vision.image_size}, patch_size={vision.patch_size}, pool_size="
            f"{vision.pool_size}: SigLIPVisionEncoder needs the patch size to divide the "
            "image and the pool size to divide the patch grid (KerasHub crops the rest)"
        )
    if windows and tokens_per_image > min(windows):
        missing.append(
            f"{tokens_per_image} tokens per image > sliding_window_size={min(windows)}: "
            "KerasHub also windows the attention inside an image on local layers, ours "
            "keeps each image fully bidirectional"
        )
    if missing:
        raise NotImplementedError(
            "This Gemma3 vision encoder cannot be expressed by VishwamBackbone: "
            + "; ".join(missing)
        )
    if image_token_id is None or not 0 <= image_token_id < gemma.vocabulary_size:
        raise ValueError(
            "Converting a Gemma3Backbone with a vision encoder needs `image_token_id`, the id "
            "of the image placeholder token (`Gemma3Tokenizer.image_placeholder_id`), in "
            f"[0, {gemma.vocabulary_size}). Received: image_token_id={image_token_id!r}"
        )
    # KerasHub gives the block norms their default epsilon whatever the encoder's
    # `layer_norm_epsilon` (which only reaches the output RMSNorm); we share one.
    encoder = parts.image_encoder
    norms = [encoder.encoder_layer_norm, parts.vision_output_encoder.vision_soft_embedding_norm]
    norms += [n for b in encoder.resblocks for n in (b.layer_norm_1, b.layer_norm_2)]
    return _uniform((n.epsilon for n in norms), "vision norm epsilon", 1e-6)


def gemma3_vision_config(gemma, image_token_id=None):
    """`VishwamBackbone` vision arguments for `gemma.vision_encoder`.

    Args:
        gemma: `keras_hub.models.Gemma3Backbone` with a vision encoder.
        image_token_id: int. Id of the image placeholder token in the prompts, Gemma 3's
            `<img>` (`Gemma3Tokenizer.image_placeholder_id`).

    Returns:
        dict with `vision_encoder` (a new `SigLIPVisionEncoder` in the Gemma 3 vision
        encoder's dtype policy), `fusion_type="interleave"` and `image_token_id`.
    """
    from vishwam_keras.layers.vision_encoder import SigLIPVisionEncoder

    vision = gemma.vision_encoder
    epsilon = _check_vision_expressible(gemma, vision, image_token_id)
    encoder = SigLIPVisionEncoder(
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        hidden_dim=vision.hidden_dim,
        num_layers=vision.num_layers,
        num_heads=vision.num_heads,
        intermediate_dim=vision.intermediate_dim,
        output_dim=vision.output_dim,
        pooling="avg",
        num_pooled_tokens=vision.num_vision_tokens_per_image,
        layer_norm_epsilon=epsilon,
        dtype=vision.dtype_policy,  # float32 under a bfloat16 text model, as KerasHub
        name="vision_encoder",
    )
    return dict(vision_encoder=encoder, fusion_type="interleave", image_token_id=image_token_id)


def copy_gemma3_vision_weights(gemma, backbone):
    """Copy every weight of `gemma.vision_encoder` into `backbone.vision_encoder` (built by
    `gemma3_vision_config`); a leftover on either side is an error."""
    ours, vision = backbone.vision_encoder, gemma.vision_encoder
    parts = _vision_parts(vision)
    pairs = _pairs(ours, parts, _VISION_WEIGHTS, "vision_encoder")
    for i, (block, theirs) in enumerate(zip(ours.blocks, parts.image_encoder.resblocks)):
        pairs += _pairs(block, theirs, _VISION_BLOCK_WEIGHTS, f"vision_encoder block_{i}")
    _copy_all(pairs, ours.weights, vision.weights)
    return backbone


def from_keras_hub_gemma3(gemma3_backbone, dtype=None, image_token_id=None):
    """A `VishwamBackbone` with the architecture and weights of a KerasHub Gemma 3 backbone.

    Maps the config (query scale, sliding window and which layers use it, local/global RoPE
    wavelengths and global scaling factor, attention and final soft caps, QK-norm, norm
    epsilon) and copies every weight, transposing Gemma 3's heads-first query/key/value
    kernels. Both models then compute the same logits (`tests/test_convert.py`).

    A backbone with a vision encoder converts too: `Gemma3VisionEncoder` becomes a
    `SigLIPVisionEncoder(pooling="avg")` (ViT, average pooling by `pool_size`, RMSNorm and
    projection) with `fusion_type="interleave"`. Where KerasHub takes `images`
    `(batch, num_images, H, W, 3)`, `vision_indices` and `vision_mask`, the converted model
    takes the same `images`, an `image_mask` `(batch, num_images)` marking real images, and
    reads the image positions from the `image_token_id` placeholders in `token_ids`;
    each image's tokens attend to each other both ways, as in KerasHub. Equal logits
    assume Gemma 3's prompt format: images apart (between `<start_of_image>` and
    `<end_of_image>`; KerasHub merges adjacent images into one bidirectional span) and not
    at position 0 (KerasHub writes the text embedding back there).

    Raises `NotImplementedError` for Gemma 3 options VishwamBackbone cannot express: no
    post-attention/post-feed-forward norms, a local RoPE scaling factor other than 1,
    embedding-model heads, bidirectional attention; in the vision encoder, an image size
    the patch size does not divide or a patch grid the pool size does not divide, more
    tokens per image than the sliding window, or norms with different epsilons.

    Args:
        gemma3_backbone: `keras_hub.models.Gemma3Backbone`.
        dtype: `None` or a dtype / policy for the new backbone. Defaults to the Gemma 3
            backbone's dtype policy. The vision encoder keeps the policy of Gemma 3's
            (float32 when the text model is bfloat16).
        image_token_id: int. Only for a backbone with a vision encoder, where it is
            required: the id of the image placeholder token, Gemma 3's `<img>`
            (`keras_hub.models.Gemma3Tokenizer.image_placeholder_id`).

    Returns:
        `VishwamBackbone`.

    Example:
    ```python
    gemma = keras_hub.models.Gemma3Backbone.from_preset("gemma3_instruct_4b")
    tokenizer = keras_hub.models.Gemma3Tokenizer.from_preset("gemma3_instruct_4b")
    backbone = vishwam_keras.convert.from_keras_hub_gemma3(
        gemma, image_token_id=tokenizer.image_placeholder_id
    )
    lm = vishwam_keras.VishwamCausalLM(backbone)
    ```
    """
    from keras_hub.models import Gemma3Backbone

    from vishwam_keras.models.backbone import VishwamBackbone

    if not isinstance(gemma3_backbone, Gemma3Backbone):
        raise TypeError(
            "`gemma3_backbone` must be a keras_hub.models.Gemma3Backbone. "
            f"Received: {type(gemma3_backbone).__name__}"
        )
    has_vision = getattr(gemma3_backbone, "vision_encoder", None) is not None
    config = gemma3_text_config(gemma3_backbone)
    if has_vision:
        config.update(gemma3_vision_config(gemma3_backbone, image_token_id))
    backbone = VishwamBackbone(**config, dtype=dtype or gemma3_backbone.dtype_policy)
    copy_gemma3_text_weights(gemma3_backbone, backbone)
    if has_vision:
        copy_gemma3_vision_weights(gemma3_backbone, backbone)
    return backbone
