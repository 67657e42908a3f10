"""`create_multimodal_model(**config)`: the seed's one-call constructor, thin over the classes.

Builds a `VishwamCausalLM` (with its backbone) from `MultimodalConfig` fields.
"""

import keras
import numpy as np  # noqa: F401  (used by the docstring example)

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


def create_preprocessor(config, sequence_length=128, name=None):
    """The bundled tokenizer (+ an image converter for a vision config) as a preprocessor.

    The tokenizer is the packaged vocabulary of `config.vocabulary_size` pieces
    (`tokenizer.PACKAGED_VOCABULARIES`: 8192 or 2048); another size raises a
    `ValueError` that says how to train one.

    `name` (optional) names the preprocessor and, with suffixes, its tokenizer and image
    converter; Keras' automatic names (`vishwam_tokenizer`, then `vishwam_tokenizer_1`,
    ...) count every object made in the process, and they are saved with a preset.
    """
    from vishwam_keras.models.image_converter import VishwamImageConverter
    from vishwam_keras.models.preprocessor import VishwamCausalLMPreprocessor
    from vishwam_keras.models.tokenizer import VishwamTokenizer, default_vocabulary_path

    def named(suffix):
        return {} if name is None else {"name": f"{name}{suffix}"}

    image_converter = None
    if config.vision_encoder_kwargs() is not None:
        image_converter = VishwamImageConverter(
            image_size=config.image_size, num_channels=config.num_channels, **named("_image_converter")
        )
    return VishwamCausalLMPreprocessor(
        VishwamTokenizer(proto=default_vocabulary_path(config.vocabulary_size), **named("_tokenizer")),
        image_converter=image_converter,
        sequence_length=sequence_length,
        num_vision_tokens_per_image=config.num_vision_tokens,
        **named(""),
    )


@keras.saving.register_keras_serializable(package="vishwam_keras")
class GemmaInspiredMultimodalTransformer(VishwamCausalLM):
    """The seed design's model class: a `VishwamCausalLM` built from a `MultimodalConfig`.

    `GemmaInspiredMultimodalTransformer(config=MultimodalConfig(...))` builds the
    backbone the config describes (vision encoder and fusion included); everything else
    (`fit`, `generate`, `save`, presets) is `VishwamCausalLM`'s.

    Args:
        config: `MultimodalConfig`. Ignored when `backbone` is given.
        backbone: `None` or a `VishwamBackbone` (used when reloading a saved model).
        preprocessor: `None` or `VishwamCausalLMPreprocessor`.

    Example:
    >>> model = GemmaInspiredMultimodalTransformer(
    ...     config=MultimodalConfig(embed_dim=32, num_heads=4, num_layers=2, vocabulary_size=100))
    >>> tuple(model(input_ids=np.ones((1, 4), "int32")).shape)
    (1, 4, 100)
    """

    def __init__(self, config=None, backbone=None, preprocessor=None, **kwargs):
        if backbone is None:
            if config is None:
                config = MultimodalConfig()
            if not isinstance(config, MultimodalConfig):
                raise TypeError(
                    f"`config` must be a MultimodalConfig. Received: {type(config).__name__}"
                )
            backbone = config.build_backbone(dtype=kwargs.pop("dtype", None))
        super().__init__(backbone=backbone, preprocessor=preprocessor, **kwargs)
