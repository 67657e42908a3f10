"""The seed design's names and snippets, run as written with small sizes."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import vishwam_keras
from vishwam_keras import (
    GEMMA_4B_MULTIMODAL_CONFIG,
    GEMMA_12B_MULTIMODAL_CONFIG,
    LARGE_MODEL_TRAINING_CONFIG,
    MEDIUM_MODEL_TRAINING_CONFIG,
    SMALL_MODEL_TRAINING_CONFIG,
    AdaptiveLearningRateSchedule,
    AdaptiveModalityFusion,
    AdvancedRoPE,
    AdvancedTrainingConfig,
    AttentionType,
    CrossModalAttention,
    CurriculumStage,
    FlashAttention2,
    GemmaInspiredMultimodalTransformer,
    GroupedQueryAttention,
    MultimodalConfig,
    MultimodalLoss,
    MultimodalTrainer,
    MultiScaleAttention,
    QueryKeyNormalization,
    SigLIPVisionEncoder,
    SlidingWindowAttention,
    SparseAttention,
    create_attention_layer,
    create_multimodal_model,
    main_training_pipeline,
)

SMALL = dict(
    embed_dim=64, num_heads=4, num_kv_heads=2, num_layers=6, vocabulary_size=128,
    vision_embed_dim=32, vision_num_layers=1, vision_num_heads=2, image_size=16, patch_size=4,
    num_vision_tokens=4, sliding_window_size=8, head_dim=16, intermediate_dim=128,
    vision_intermediate_dim=64,
)


def test_all_seed_names_import():
    for name in (
        "GemmaInspiredMultimodalTransformer", "GroupedQueryAttention", "SigLIPVisionEncoder",
        "AdaptiveModalityFusion", "FlashAttention2", "CrossModalAttention", "MultiScaleAttention",
        "SparseAttention", "SlidingWindowAttention", "AdvancedRoPE", "QueryKeyNormalization",
        "AttentionType", "GEMMA_4B_MULTIMODAL_CONFIG", "GEMMA_12B_MULTIMODAL_CONFIG",
        "SMALL_MODEL_TRAINING_CONFIG", "MEDIUM_MODEL_TRAINING_CONFIG", "LARGE_MODEL_TRAINING_CONFIG",
        "MultimodalTrainer", "CurriculumStage", "AdaptiveLearningRateSchedule", "MultimodalLoss",
        "AdvancedTrainingConfig", "create_multimodal_model", "main_training_pipeline",
        "create_attention_layer", "MultimodalConfig",
    ):
        assert hasattr(vishwam_keras, name), name
    assert AttentionType.GLOBAL != AttentionType.LOCAL_SLIDING


def test_multimodal_transformer_from_the_seed_config():
    config = MultimodalConfig(
        embed_dim=64, num_heads=16, num_kv_heads=8, vision_embed_dim=32,
        cross_attn_layers=[4, 8, 12, 16, 20], fusion_type="adaptive_gate",
        attn_logits_soft_cap=50.0, use_sliding_window=True, sliding_window_size=16,
        num_layers=6, vocabulary_size=128, head_dim=8, image_size=16, patch_size=4,
        vision_num_layers=1, vision_num_heads=2, num_vision_tokens=4,
    )
    model = GemmaInspiredMultimodalTransformer(config=config)
    assert model.backbone.cross_attn_layers == [4]  # indices past num_layers are dropped
    logits = model(input_ids=np.ones((2, 5), "int32"), images=np.zeros((2, 16, 16, 3), "float32"))
    assert tuple(logits.shape) == (2, 5, 128)


def test_create_multimodal_model_and_logits_snippet():
    fields = {**GEMMA_4B_MULTIMODAL_CONFIG.__dict__, **SMALL}
    model = create_multimodal_model(**fields)
    text_tokens = np.random.randint(0, 128, (2, 7)).astype("int32")
    images = np.random.uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    logits = model(input_ids=text_tokens, images=images)
    assert tuple(logits.shape) == (2, 7, 128)
    assert GEMMA_12B_MULTIMODAL_CONFIG.fusion_type == "adaptive_gate"


def test_attention_snippets():
    attention = create_attention_layer(
        attention_type="multi_scale", embed_dim=64, num_heads=16, window_sizes=[2, 4, 8, -1]
    )
    assert isinstance(attention, MultiScaleAttention)
    flash_attn = FlashAttention2(
        embed_dim=64, num_heads=16, num_kv_heads=8, use_qk_norm=True, attn_logits_soft_cap=50.0,
        attn_type=AttentionType.LOCAL_SLIDING, window_size=8,
    )
    x = np.random.randn(1, 12, 64).astype("float32")
    assert tuple(attention(x).shape) == tuple(flash_attn(x).shape) == (1, 12, 64)
    assert isinstance(AdvancedRoPE(), keras.layers.Layer)
    q, k = QueryKeyNormalization()(np.ones((1, 3, 2, 8), "float32"), np.ones((1, 3, 1, 8), "float32"))
    assert tuple(q.shape) == (1, 3, 2, 8)


def test_training_config_with_dict_stages_and_pipeline_snippet():
    config = AdvancedTrainingConfig(
        curriculum_stages=[
            {"name": "text_pretraining", "steps": 10000, "modalities": ["text"]},
            {"name": "vision_alignment", "steps": 20000, "modalities": ["text", "vision"]},
            {"name": "multimodal_finetuning", "steps": 70000, "modalities": ["text", "vision"]},
        ],
        use_curriculum=True, use_flash_attention=True, use_mixed_precision=True,
    )
    assert [s.steps for s in config.stages()] == [10000, 20000, 70000]
    assert isinstance(config.stages()[0], CurriculumStage)
    # final_state = main_training_pipeline(train_dataset=your_data, config=MEDIUM_...), scaled down:
    tiny = MultimodalConfig(embed_dim=32, num_heads=4, num_layers=2, vocabulary_size=97, sliding_window_size=4)
    medium = dataclasses.replace(
        MEDIUM_MODEL_TRAINING_CONFIG, model=tiny, batch_size=4, use_mixed_precision=False,
        curriculum_stages=[{"name": "text_pretraining", "steps": 3, "modalities": ["text"]}],
    )
    tokens = np.random.default_rng(0).integers(4, 97, (8, 9)).astype("int32")
    your_data = tf.data.Dataset.from_tensor_slices(
        ({"token_ids": tokens[:, :-1], "padding_mask": np.ones_like(tokens[:, :-1])}, tokens[:, 1:])
    ).repeat().batch(4)
    model = vishwam_keras.VishwamCausalLM(tiny.build_backbone())
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    final_state = main_training_pipeline(train_dataset=your_data, config=medium, model=model, verbose=0)
    after = [keras.ops.convert_to_numpy(w) for w in final_state.model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    trainer = MultimodalTrainer(medium, model=model)
    assert trainer.history is None
    assert LARGE_MODEL_TRAINING_CONFIG.model is GEMMA_12B_MULTIMODAL_CONFIG
    assert SMALL_MODEL_TRAINING_CONFIG.model.vision_embed_dim is not None


def test_layer_classes_are_the_library_classes():
    for cls in (GroupedQueryAttention, SigLIPVisionEncoder, AdaptiveModalityFusion,
                CrossModalAttention, SparseAttention, SlidingWindowAttention, MultimodalLoss,
                AdaptiveLearningRateSchedule):
        assert cls.__module__.startswith("vishwam_keras.")
