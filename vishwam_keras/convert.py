"""Weights from KerasHub's Gemma 3 into a `VishwamBackbone` of the same architecture.

Interop at the edge of the flow: a converted backbone drops into `VishwamCausalLM` like ours.
"""

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


def _assign(ours, theirs, transform, where):
    value = np.asarray(keras.ops.convert_to_numpy(theirs.value))
    if transform is not None:
        value = np.transpose(value, transform)
    if tuple(value.shape) != tuple(ours.shape):
        raise ValueError(
            f"{where}: Gemma3 weight of shape {tuple(theirs.shape)} does not map onto ours "
            f"{tuple(ours.shape)} (transform {transform})"
        )
    ours.assign(value)


def copy_gemma3_text_weights(gemma, backbone):
    """Copy every text weight of `gemma` into `backbone` (built by `gemma3_text_config`).

    Every weight on both sides is accounted for; a leftover on either side is an error.
    """
    pairs = [
        (backbone.token_embedding.embeddings, gemma.token_embedding.embeddings, None, "embedding")
    ]
    table = _BLOCK_WEIGHTS + (_QK_NORM_WEIGHTS if backbone.use_query_key_norm else ())
    for i, (ours, theirs) in enumerate(zip(backbone.transformer_layers, gemma.transformer_layers)):
        for our_name, their_name, transform in table:
            where = f"decoder_block_{i} {our_name}"
            pairs.append((_lookup(ours, our_name), _lookup(theirs, their_name), transform, where))
    pairs.append((backbone.final_norm.scale, gemma.layer_norm.scale, None, "final norm"))

    for ours, theirs, transform, where in pairs:
        _assign(ours, theirs, transform, where)
    vision = getattr(gemma, "vision_encoder", None)
    copied_ours = {id(v) for v, _, _, _ in pairs}
    copied_theirs = {id(v) for _, v, _, _ in pairs}
    copied_theirs |= {id(v) for v in (vision.weights if vision is not None else [])}
    left_ours = [
        v.path for v in backbone.weights
        if id(v) not in copied_ours and not v.path.startswith("vision_")
    ]
    left_theirs = [v.path for v in gemma.weights if id(v) not in copied_theirs]
    if left_ours or left_theirs:
        raise ValueError(f"Weights not converted. Ours: {left_ours}. Gemma3's: {left_theirs}.")
    return backbone


# --- vision (pending) --------------------------------------------------------------------
# Gemma 3's vision tower (`Gemma3VisionEncoder`: SigLIP patch conv, position embedding, ViT
# blocks, average pooling to `num_vision_tokens_per_image`, RMS-normed projection to d) and its
# interleaving of image tokens at `vision_indices` map onto our `vision_encoder*` and
# `vision_projector*` layers once VishwamBackbone has them: fill in these two functions.

VISION_PENDING = (
    "Converting a Gemma3Backbone with a vision encoder is pending: VishwamBackbone has no "
    "vision encoder yet. Convert the text model (a `*_text` preset, or a backbone built with "
    "`vision_encoder=None`) for now."
)


def gemma3_vision_config(gemma):
    """`VishwamBackbone` vision arguments for `gemma.vision_encoder` (pending)."""
    raise NotImplementedError(VISION_PENDING)


def copy_gemma3_vision_weights(gemma, backbone):
    """Copy the vision tower's weights (pending)."""
    raise NotImplementedError(VISION_PENDING)


def from_keras_hub_gemma3(gemma3_backbone, dtype=None):
    """A `VishwamBackbone` with the architecture and weights of a KerasHub Gemma 3 backbone.

    Maps the config (query scale, sliding window and which layers use it, local/global RoPE
    wavelengths and global scaling factor, attention and final soft caps, QK-norm, norm
    epsilon) and copies every weight, transposing Gemma 3's heads-first query/key/value
    kernels. Both models then compute the same logits (`tests/test_convert.py`).

    Text only for now: a backbone with a vision encoder raises `NotImplementedError`
    (pending, until VishwamBackbone has its vision encoder). Also raises
    `NotImplementedError` for Gemma 3 options VishwamBackbone cannot express: no
    post-attention/post-feed-forward norms, a local RoPE scaling factor other than 1,
    embedding-model heads, bidirectional attention.

    Args:
        gemma3_backbone: `keras_hub.models.Gemma3Backbone`.
        dtype: `None` or a dtype / policy for the new backbone. Defaults to the Gemma 3
            backbone's dtype policy.

    Returns:
        `VishwamBackbone`.

    Example:
    ```python
    gemma = keras_hub.models.Gemma3Backbone.from_preset("gemma3_1b")
    backbone = vishwam_keras.convert.from_keras_hub_gemma3(gemma)
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
        config.update(gemma3_vision_config(gemma3_backbone))
    backbone = VishwamBackbone(**config, dtype=dtype or gemma3_backbone.dtype_policy)
    copy_gemma3_text_weights(gemma3_backbone, backbone)
    if has_vision:
        copy_gemma3_vision_weights(gemma3_backbone, backbone)
    return backbone
