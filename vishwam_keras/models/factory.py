"""`create_multimodal_model(**config)`: the seed's one-call constructor, thin over the classes.

Builds a `VishwamCausalLM` (with its backbone) from `MultimodalConfig` fields.
"""

from vishwam_keras.config import MultimodalConfig
from vishwam_keras.models.causal_lm import VishwamCausalLM


def create_multimodal_model(config=None, preprocessor=None, dtype=None, **config_fields):
    """Build a `VishwamCausalLM` from a `MultimodalConfig` or its fields.

    Args:
        config: `None` or `MultimodalConfig`.
        preprocessor: `None` or `VishwamCausalLMPreprocessor`.
        dtype: `None` or a dtype policy name.
        **config_fields: `MultimodalConfig` fields (used when `config` is None), e.g.
            `create_multimodal_model(**GEMMA_4B_MULTIMODAL_CONFIG.__dict__)`.

    Example:
    >>> model = create_multimodal_model(embed_dim=32, num_heads=4, num_layers=2,
    ...                                 vocabulary_size=100, sliding_window_size=4)
    >>> model.backbone.num_layers
    2
    """
    if config is None:
        known = {f for f in MultimodalConfig.__dataclass_fields__}
        unknown = sorted(set(config_fields) - known)
        if unknown:
            raise TypeError(
                f"Unknown config fields {unknown}. Expected fields of MultimodalConfig: "
                f"{sorted(known)}"
            )
        config = MultimodalConfig(**config_fields)
    elif config_fields:
        raise TypeError("Pass either `config` or config fields, not both.")
    return VishwamCausalLM(config.build_backbone(dtype=dtype), preprocessor=preprocessor)
