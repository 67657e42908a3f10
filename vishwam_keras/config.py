"""Model configuration as data: `MultimodalConfig`, the named model configs, parameter counts.

Presets in `vishwam_keras/presets/` are written from these configs by `scripts/make_presets.py`.
"""

import dataclasses
from typing import List, Optional

TOKENIZER_VOCABULARY_SIZE = 8192
# The packaged vocabulary trained on FashionScenes text as well (`--fashion-scenes` of
# scripts/train_tokenizer.py): `train_fashion_preset(vocabulary_size=2048)` trains the tiny
# preset with it in about half the time (benchmarks/fashion_training/README.md).
FASHION_VOCABULARY_SIZE = 2048


@dataclasses.dataclass
class MultimodalConfig:
    """The architecture of a Vishwam model, with the seed design's field names.

    Fields left `None` take Gemma-style defaults: `head_dim = embed_dim // num_heads`,
    `intermediate_dim = 4 * embed_dim`, `num_kv_heads = num_heads // 2` (at least 1).
    `to_backbone_kwargs()` turns it into `VishwamBackbone` arguments.
    """

    embed_dim: int = 2560
    num_heads: int = 8
    num_kv_heads: Optional[int] = None
    num_layers: int = 34
    vocabulary_size: int = TOKENIZER_VOCABULARY_SIZE
    intermediate_dim: Optional[int] = None
    head_dim: Optional[int] = None
    use_qk_norm: bool = True
    attn_logits_soft_cap: Optional[float] = None
    final_logit_soft_cap: Optional[float] = None
    use_sliding_window: bool = True
    sliding_window_size: int = 1024
    sliding_window_pattern: int = 6
    local_rope_max_wavelength: int = 10000
    global_rope_max_wavelength: int = 1000000
    global_rope_scaling_factor: float = 8.0
    query_pre_attn_scalar: Optional[float] = None
    layer_norm_epsilon: float = 1e-6
    dropout: float = 0.0
    attention_implementation: Optional[str] = None
    layer_types: Optional[List[str]] = None
    # Vision (a text-only model when `vision_embed_dim` is None).
    vision_embed_dim: Optional[int] = None
    vision_num_layers: int = 2
    vision_num_heads: int = 4
    vision_intermediate_dim: Optional[int] = None
    image_size: int = 224
    patch_size: int = 14
    vision_pooling: Optional[str] = "avg"
    num_vision_tokens: int = 16
    num_channels: int = 3
    fusion_type: str = "interleave"
    cross_attn_layers: Optional[List[int]] = None

    def __post_init__(self):
        for name in ("embed_dim", "num_heads", "num_layers", "vocabulary_size", "sliding_window_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
        if self.num_kv_heads is None:
            self.num_kv_heads = max(1, self.num_heads // 2)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                "`num_kv_heads` must divide `num_heads`. Received: "
                f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim is None:
            self.head_dim = self.embed_dim // self.num_heads
        if self.intermediate_dim is None:
            self.intermediate_dim = 4 * self.embed_dim
        if self.vision_embed_dim is not None and self.vision_intermediate_dim is None:
            self.vision_intermediate_dim = 4 * self.vision_embed_dim
        if self.cross_attn_layers is not None:
            self.cross_attn_layers = [i for i in self.cross_attn_layers if i < self.num_layers]

    def vision_encoder_kwargs(self):
        """`SigLIPVisionEncoder` arguments, or None for a text-only config."""
        if self.vision_embed_dim is None:
            return None
        return dict(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_dim=self.vision_embed_dim,
            num_layers=self.vision_num_layers,
            num_heads=self.vision_num_heads,
            intermediate_dim=self.vision_intermediate_dim,
            output_dim=self.embed_dim,
            pooling=self.vision_pooling,
            num_pooled_tokens=self.num_vision_tokens,
            num_channels=self.num_channels,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )

    def to_backbone_kwargs(self):
        layer_types = self.layer_types
        if not self.use_sliding_window:
            layer_types = ["global"] * self.num_layers
        return dict(
            vocabulary_size=self.vocabulary_size,
            num_layers=self.num_layers,
            num_query_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            hidden_dim=self.embed_dim,
            intermediate_dim=self.intermediate_dim,
            head_dim=self.head_dim,
            sliding_window_size=self.sliding_window_size,
            sliding_window_pattern=self.sliding_window_pattern,
            layer_types=layer_types,
            use_query_key_norm=self.use_qk_norm,
            attention_logit_soft_cap=self.attn_logits_soft_cap,
            final_logit_soft_cap=self.final_logit_soft_cap,
            query_pre_attn_scalar=self.query_pre_attn_scalar,
            local_rope_max_wavelength=self.local_rope_max_wavelength,
            global_rope_max_wavelength=self.global_rope_max_wavelength,
            global_rope_scaling_factor=self.global_rope_scaling_factor,
            layer_norm_epsilon=self.layer_norm_epsilon,
            dropout=self.dropout,
            attention_implementation=self.attention_implementation,
        )

    def build_backbone(self, dtype=None):
        """A `VishwamBackbone` (with its vision encoder, if any) for this config."""
        from vishwam_keras.layers.vision_encoder import SigLIPVisionEncoder
        from vishwam_keras.models.backbone import VishwamBackbone

        kwargs = self.to_backbone_kwargs()
        vision = self.vision_encoder_kwargs()
        if vision is not None:
            kwargs["vision_encoder"] = SigLIPVisionEncoder(**vision, dtype=dtype, name="vision_encoder")
            kwargs["fusion_type"] = self.fusion_type
            kwargs["cross_attn_layers"] = self.cross_attn_layers
        return VishwamBackbone(**kwargs, dtype=dtype)

    def num_parameters(self):
        text = count_backbone_parameters(**self.to_backbone_kwargs())
        vision = self.vision_encoder_kwargs()
        if vision is None:
            return text
        count = text + count_vision_encoder_parameters(**vision)
        if self.fusion_type != "interleave":
            blocks = self.cross_attn_layers
            if blocks is None:
                blocks = list(range(3, self.num_layers, 4)) or [self.num_layers - 1]
            count += len(blocks) * count_cross_attention_block_parameters(
                self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim,
                self.intermediate_dim, adaptive=self.fusion_type == "adaptive_gate",
                use_query_key_norm=self.use_qk_norm,
            )
        return count


def count_backbone_parameters(
    vocabulary_size,
    num_layers,
    num_query_heads,
    num_key_value_heads,
    hidden_dim,
    intermediate_dim,
    head_dim,
    use_query_key_norm=True,
    **unused,
):
    """Parameters of a `VishwamBackbone`, computed from its config without building it."""
    d = hidden_dim
    attention = d * head_dim * (2 * num_query_heads + 2 * num_key_value_heads)
    qk_norm = 2 * head_dim if use_query_key_norm else 0
    feedforward = 3 * d * intermediate_dim
    norms = 4 * d
    per_layer = attention + qk_norm + feedforward + norms
    return vocabulary_size * d + num_layers * per_layer + d


def count_vision_encoder_parameters(
    image_size, patch_size, hidden_dim, num_layers, num_heads, intermediate_dim, output_dim,
    pooling="map", num_pooled_tokens=1, num_channels=3, **unused,
):
    """Parameters of a `SigLIPVisionEncoder`, from its config."""
    d, f = hidden_dim, intermediate_dim
    attention = 4 * d * d + 4 * d  # q, k, v, o with biases
    mlp = 2 * d * f + f + d
    block = 4 * d + attention + mlp  # two LayerNorms
    count = patch_size * patch_size * num_channels * d + d  # patch conv
    count += (image_size // patch_size) ** 2 * d  # position embeddings
    count += num_layers * block + 2 * d  # blocks, final LayerNorm
    if pooling == "map":
        count += num_pooled_tokens * d + attention + 2 * d + mlp
    return count + d + d * output_dim  # projector: RMSNorm + Dense


def count_cross_attention_block_parameters(
    hidden_dim, num_heads, num_key_value_heads, head_dim, intermediate_dim,
    adaptive=False, use_query_key_norm=True, gate_hidden_dim=None,
):
    """Parameters of a `GatedCrossAttentionBlock` (vision tokens at the text width)."""
    d = hidden_dim
    attention = d * head_dim * (2 * num_heads + 2 * num_key_value_heads)
    attention += 2 * head_dim if use_query_key_norm else 0
    count = 2 * d + attention + 3 * d * intermediate_dim + 1  # norms, attention, FFN, FFN gate
    if adaptive:
        g = gate_hidden_dim or max(d // 4, 1)
        count += 1 + 2 * d + 2 * d * g + g + g + 1
    else:
        count += 1
    return count


# SigLIP-So400m-shaped encoder, as Gemma 3 uses: 896 px, patch 14, 27 layers, width 1152,
# average-pooled from 64 x 64 patches to 256 tokens.
SO400M_VISION = dict(
    vision_embed_dim=1152, vision_num_layers=27, vision_num_heads=16,
    vision_intermediate_dim=4304, image_size=896, patch_size=14,
    vision_pooling="avg", num_vision_tokens=256,
)
SEED_CROSS_ATTN_LAYERS = [4, 8, 12, 16, 20]

# Gemma-3-like shapes (GQA, head_dim 256, 5:1 local:global) with our 8k vocabulary; layer
# counts chosen so the totals land on the names (recorded in each preset's metadata.json).
VISHWAM_1B_CONFIG = MultimodalConfig(
    embed_dim=1152, num_heads=4, num_kv_heads=1, head_dim=256, num_layers=36,
    intermediate_dim=6912, sliding_window_size=512, global_rope_scaling_factor=1.0,
)
VISHWAM_4B_CONFIG = MultimodalConfig(
    embed_dim=2560, num_heads=8, num_kv_heads=4, head_dim=256, num_layers=34,
    intermediate_dim=10240, sliding_window_size=1024, **SO400M_VISION,
    fusion_type="adaptive_gate", cross_attn_layers=SEED_CROSS_ATTN_LAYERS,
)
VISHWAM_12B_CONFIG = MultimodalConfig(
    embed_dim=3840, num_heads=16, num_kv_heads=8, head_dim=256, num_layers=48,
    intermediate_dim=15360, sliding_window_size=1024, **SO400M_VISION,
    fusion_type="adaptive_gate", cross_attn_layers=SEED_CROSS_ATTN_LAYERS,
)
GEMMA_1B_TEXT_CONFIG = VISHWAM_1B_CONFIG
GEMMA_4B_MULTIMODAL_CONFIG = VISHWAM_4B_CONFIG
GEMMA_12B_MULTIMODAL_CONFIG = VISHWAM_12B_CONFIG

# A small config for tests, demos and guides: builds and generates in seconds on a CPU.
TINY_CONFIG = MultimodalConfig(
    embed_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, num_layers=3,
    intermediate_dim=128, sliding_window_size=8, sliding_window_pattern=3,
)

# The model of the `vishwam_tiny_fashion` preset: a few million parameters, trained on
# FashionScenes (56 x 56 grayscale 2 x 2 grids) through the three-stage curriculum.
FASHION_TINY_CONFIG = MultimodalConfig(
    embed_dim=192, num_heads=4, num_kv_heads=2, head_dim=48, num_layers=4,
    intermediate_dim=512, sliding_window_size=64, sliding_window_pattern=2,
    final_logit_soft_cap=30.0,
    vision_embed_dim=128, vision_num_layers=3, vision_num_heads=4, vision_intermediate_dim=256,
    image_size=56, patch_size=7, vision_pooling="avg", num_vision_tokens=16, num_channels=1,
    fusion_type="interleave",
)

MODEL_CONFIGS = {
    "vishwam_1b": VISHWAM_1B_CONFIG,
    "vishwam_4b": VISHWAM_4B_CONFIG,
    "vishwam_12b": VISHWAM_12B_CONFIG,
    "tiny": TINY_CONFIG,
    "fashion_tiny": FASHION_TINY_CONFIG,
}
