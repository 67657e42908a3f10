"""vishwam_keras: Gemma-style multimodal transformers for Keras 3, on KerasHub's base classes.

This module is the public API; everything users need is re-exported here.
"""

from vishwam_keras import ops
from vishwam_keras.config import (
    GEMMA_1B_TEXT_CONFIG,
    GEMMA_4B_MULTIMODAL_CONFIG,
    GEMMA_12B_MULTIMODAL_CONFIG,
    FASHION_TINY_CONFIG,
    MODEL_CONFIGS,
    VISHWAM_1B_CONFIG,
    VISHWAM_4B_CONFIG,
    VISHWAM_12B_CONFIG,
    TINY_CONFIG,
    MultimodalConfig,
    count_backbone_parameters,
)
from vishwam_keras.convert import from_keras_hub_gemma3
from vishwam_keras.distribution import (
    data_parallel,
    get_layout_map,
    memory_per_device,
    model_parallel,
)
from vishwam_keras.layers.attention.cross_modal import CrossModalAttention
from vishwam_keras.layers.attention.factory import create_attention_layer
from vishwam_keras.layers.attention.grouped_query import (
    AttentionType,
    FlashAttention2,
    GroupedQueryAttention,
    SlidingWindowAttention,
)
from vishwam_keras.layers.attention.multi_scale import MultiScaleAttention
from vishwam_keras.layers.attention.sparse import SparseAttention
from vishwam_keras.layers.decoder_block import DecoderBlock
from vishwam_keras.layers.feedforward import GatedFeedForward
from vishwam_keras.layers.fusion import AdaptiveModalityFusion, GatedCrossAttentionBlock
from vishwam_keras.layers.normalization import QueryKeyNormalization, RMSNorm
from vishwam_keras.layers.rotary import RotaryEmbedding
from vishwam_keras.layers.vision_encoder import SigLIPVisionEncoder
from vishwam_keras.models.backbone import VishwamBackbone
from vishwam_keras.models.causal_lm import VishwamCausalLM
from vishwam_keras.models.factory import (
    GemmaInspiredMultimodalTransformer,
    create_multimodal_model,
)
from vishwam_keras.models.image_converter import VishwamImageConverter
from vishwam_keras.models.preprocessor import VishwamCausalLMPreprocessor
from vishwam_keras.models.presets import available_presets
from vishwam_keras.models.tokenizer import VishwamTokenizer

from vishwam_keras.training.callbacks import LossSpikeGuard
from vishwam_keras.training.checkpointing import CheckpointCallback
from vishwam_keras.training.curriculum import (
    CurriculumCallback,
    CurriculumStage,
    default_curriculum,
    run_curriculum,
)
from vishwam_keras.training.losses import (
    LanguageModelLoss,
    MultimodalLoss,
    SigmoidContrastiveLoss,
    language_model_loss,
    sigmoid_contrastive_loss,
)
from vishwam_keras.training.pipeline import (
    LARGE_MODEL_TRAINING_CONFIG,
    MEDIUM_MODEL_TRAINING_CONFIG,
    SMALL_MODEL_TRAINING_CONFIG,
    AdvancedTrainingConfig,
    MultimodalTrainer,
    TrainingResult,
    main_training_pipeline,
)
from vishwam_keras.training.schedules import (
    AdaptiveLearningRateSchedule,
    AdaptiveLRCallback,
    WarmupCosineSchedule,
)

# Seed-design names for the same classes.
AdvancedRoPE = RotaryEmbedding

__version__ = "0.1.0"
