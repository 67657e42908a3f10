"""The table of bad inputs: one row per kind of misuse of the public API.

Each row is `BadInput(id, call, errors, match)`: `call(ctx)` performs the bad call, which must
raise one of `errors` with a message matching `match` (a regex naming the argument).
`ctx` builds the shared tiny models once. Rows whose check belongs in a file this suite does
not own carry `needs="<change>"`; `test_bad_inputs.py` marks them `xfail(strict=True)`.
"""

import contextlib
import dataclasses
import os
import tempfile
from typing import Callable, Optional, Tuple, Type

import numpy as np

V = ValueError
T = TypeError
VT = (ValueError, TypeError)


@dataclasses.dataclass(frozen=True)
class BadInput:
    id: str
    call: Callable
    errors: Tuple[Type[BaseException], ...]
    match: str
    needs: Optional[str] = None


class Context:
    """Tiny shared objects, built on first use (each case only pays for what it touches)."""

    def __init__(self):
        self._cache = {}
        self.tmp = tempfile.mkdtemp(prefix="vishwam-bad-inputs-")

    def _get(self, name, build):
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    @property
    def lm(self):
        """A text `VishwamCausalLM` (vocabulary 97) without a preprocessor."""
        from conftest import tiny_backbone_kwargs
        from vishwam_keras import VishwamBackbone, VishwamCausalLM

        return self._get("lm", lambda: VishwamCausalLM(VishwamBackbone(**tiny_backbone_kwargs())))

    @property
    def backbone(self):
        return self.lm.backbone

    @property
    def vision_backbone(self):
        from conftest import tiny_vision_backbone

        return self._get("vision_backbone", tiny_vision_backbone)

    @property
    def tokenizer(self):
        from vishwam_keras import VishwamTokenizer
        from vishwam_keras.models.tokenizer import default_vocabulary_path

        return self._get("tokenizer", lambda: VishwamTokenizer(proto=default_vocabulary_path()))

    @property
    def converter(self):
        from vishwam_keras import VishwamImageConverter

        return self._get("converter", lambda: VishwamImageConverter(image_size=8))

    @property
    def preprocessor(self):
        from vishwam_keras import VishwamCausalLMPreprocessor

        return self._get(
            "preprocessor", lambda: VishwamCausalLMPreprocessor(self.tokenizer, sequence_length=8)
        )

    @property
    def mm_preprocessor(self):
        from vishwam_keras import VishwamCausalLMPreprocessor

        return self._get(
            "mm_preprocessor",
            lambda: VishwamCausalLMPreprocessor(
                self.tokenizer, image_converter=self.converter, sequence_length=16,
                num_vision_tokens_per_image=2,
            ),
        )

    @property
    def text_lm(self):
        """A `VishwamCausalLM` with the bundled tokenizer (vocabulary 8192), sequence 8."""
        from conftest import tiny_backbone_kwargs
        from vishwam_keras import VishwamBackbone, VishwamCausalLM

        return self._get(
            "text_lm",
            lambda: VishwamCausalLM(
                VishwamBackbone(**tiny_backbone_kwargs(vocabulary_size=8192)),
                preprocessor=self.preprocessor,
            ),
        )

    @property
    def small_model(self):
        """A two-layer Keras model for the checkpoint rows."""
        import keras

        return self._get(
            "small_model",
            lambda: keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="dense_out")]),
        )

    def empty_dir(self, name):
        path = os.path.join(self.tmp, name)
        os.makedirs(path, exist_ok=True)
        return path


# === Helpers used by the rows ===
def _ones(*shape, dtype="float32"):
    return np.ones(shape, dtype)


def _tokens(ids, mask=None):
    ids = np.asarray(ids)
    return {"token_ids": ids, "padding_mask": np.ones(ids.shape, "int32") if mask is None else np.asarray(mask)}


def _nan_image(size=8):
    image = np.full((size, size, 3), 0.5, "float32")
    image[0, 0, 0] = np.nan
    return image


def _layer(name, **kwargs):
    import vishwam_keras

    return getattr(vishwam_keras, name)(**kwargs)


def _gqa(**overrides):
    kwargs = dict(hidden_dim=32, num_query_heads=4, num_key_value_heads=2, head_dim=8)
    kwargs.update(overrides)
    return _layer("GroupedQueryAttention", **kwargs)


def _dpa(query_shape=(1, 4, 4, 8), key_shape=(1, 4, 2, 8), value_shape=None, **kwargs):
    from vishwam_keras import ops

    value_shape = value_shape or key_shape
    return ops.dot_product_attention(_ones(*query_shape), _ones(*key_shape), _ones(*value_shape), **kwargs)


def _backbone(**overrides):
    from conftest import tiny_backbone_kwargs

    return _layer("VishwamBackbone", **tiny_backbone_kwargs(**overrides))


def _encoder(**overrides):
    kwargs = dict(image_size=8, patch_size=4, hidden_dim=16, num_layers=1, num_heads=2,
                  intermediate_dim=32, output_dim=32)
    kwargs.update(overrides)
    return _layer("SigLIPVisionEncoder", **kwargs)


def _cross(**overrides):
    kwargs = dict(hidden_dim=32, num_heads=4, head_dim=8)
    kwargs.update(overrides)
    return _layer("CrossModalAttention", **kwargs)


def _stage(**overrides):
    from vishwam_keras import CurriculumStage

    kwargs = dict(name="text", steps=10)
    kwargs.update(overrides)
    return CurriculumStage(**kwargs)


def _training_config(**overrides):
    from vishwam_keras import AdvancedTrainingConfig, TINY_CONFIG

    kwargs = dict(model=TINY_CONFIG)
    kwargs.update(overrides)
    return AdvancedTrainingConfig(**kwargs)


def _schedule(name, *args, **kwargs):
    import vishwam_keras

    return getattr(vishwam_keras, name)(*args, **kwargs)


def _checkpointing():
    from vishwam_keras.training import checkpointing

    return checkpointing


def _from_preset(class_name, preset, **kwargs):
    import vishwam_keras

    return getattr(vishwam_keras, class_name).from_preset(preset, **kwargs)


@contextlib.contextmanager
def _compute_refused(layer):
    """Inside the block, running `layer.call` (or `generate_step`) raises AssertionError.

    The rows that use it check that a bad input is refused before any compute; until the
    check exists, the row fails at once instead of running (and compiling) the model.
    """

    def refuse(*args, **kwargs):
        raise AssertionError(f"{layer.name} started computing: the bad input was not refused")

    names = ["call"] + (["generate_step"] if hasattr(layer, "generate_step") else [])
    for name in names:
        object.__setattr__(layer, name, refuse)
    try:
        yield layer
    finally:
        for name in names:
            object.__delattr__(layer, name)


def _refusing(layer, method="__call__", *args, **kwargs):
    with _compute_refused(layer):
        return getattr(layer, method)(*args, **kwargs)


def _compile_then_restore(lm, **kwargs):
    try:
        lm.compile(**kwargs)
    finally:
        lm.compile(sampler="greedy")  # the shared model stays usable for later rows


def _generate(lm, inputs, **kwargs):
    kwargs.setdefault("stop_token_ids", None)
    return _refusing(lm, "generate", inputs, **kwargs)


R = BadInput
CASES = [
    # --- RMSNorm, RotaryEmbedding ---
    R("rmsnorm_epsilon_zero", lambda c: _layer("RMSNorm", epsilon=0.0), V, "epsilon"),
    R("rmsnorm_epsilon_nan", lambda c: _layer("RMSNorm", epsilon=float("nan")), V, "epsilon"),
    R("rmsnorm_epsilon_string", lambda c: _layer("RMSNorm", epsilon="1e-6"), VT, "epsilon"),
    R("rope_wavelength_zero", lambda c: _layer("RotaryEmbedding", max_wavelength=0), V, "max_wavelength"),
    R("rope_wavelength_string", lambda c: _layer("RotaryEmbedding", max_wavelength="1e4"), VT,
      "max_wavelength"),
    R("rope_scaling_below_one", lambda c: _layer("RotaryEmbedding", scaling_factor=0.5), V, "scaling_factor"),
    R("rope_odd_head_dim", lambda c: _layer("RotaryEmbedding")(_ones(1, 4, 2, 7)), V, "head_dim"),
    R("rope_rank2_input", lambda c: _layer("RotaryEmbedding")(_ones(4, 8)), VT, "inputs"),
    # --- GroupedQueryAttention ---
    R("gqa_kv_heads_not_dividing", lambda c: _gqa(num_key_value_heads=3), V, "num_key_value_heads"),
    R("gqa_zero_query_heads", lambda c: _gqa(num_query_heads=0), V, "num_query_heads"),
    R("gqa_odd_head_dim", lambda c: _gqa(head_dim=7), V, "head_dim"),
    R("gqa_negative_window", lambda c: _gqa(sliding_window_size=-1), V, "sliding_window_size"),
    R("gqa_string_hidden_dim", lambda c: _gqa(hidden_dim="32"), V, "hidden_dim"),
    R("gqa_negative_soft_cap", lambda c: _gqa(logit_soft_cap=-1.0), V, "logit_soft_cap"),
    R("gqa_unknown_implementation", lambda c: _gqa(attention_implementation="fastest")(_ones(1, 4, 32)),
      V, "implementation"),
    R("gqa_padding_mask_shape", lambda c: _gqa()(_ones(1, 4, 32), padding_mask=_ones(1, 3)), V, "padding_mask"),
    R("gqa_wrong_input_width", lambda c: _gqa()(_ones(1, 4, 16)), VT, "inputs|hidden_dim"),
    R("gqa_rank2_input", lambda c: _gqa()(_ones(4, 32)), VT, "inputs"),
    # --- FlashAttention2, MultiScaleAttention, SparseAttention ---
    R("flash_unknown_attn_type", lambda c: _layer("FlashAttention2", embed_dim=32, num_heads=4,
                                                   attn_type="diagonal"), V, "attn_type"),
    R("flash_local_without_window", lambda c: _layer("FlashAttention2", embed_dim=32, num_heads=4,
                                                      attn_type="local_sliding"), V, "window_size"),
    R("flash_heads_not_dividing_width", lambda c: _layer("FlashAttention2", embed_dim=30, num_heads=4),
      V, "num_heads"),
    R("flash_kv_heads_not_dividing", lambda c: _layer("FlashAttention2", embed_dim=32, num_heads=4,
                                                       num_kv_heads=3), V, "num_key_value_heads"),
    R("flash_zero_window", lambda c: _layer("FlashAttention2", embed_dim=32, num_heads=4,
                                             attn_type="local_sliding", window_size=0), V, "window"),
    R("flash_string_heads", lambda c: _layer("FlashAttention2", embed_dim=32, num_heads="4"), V, "num_heads"),
    R("multiscale_empty_windows", lambda c: _layer("MultiScaleAttention", embed_dim=32, num_heads=4,
                                                    window_sizes=[]), V, "window_sizes"),
    R("multiscale_zero_window", lambda c: _layer("MultiScaleAttention", embed_dim=32, num_heads=4,
                                                  window_sizes=[0, -1]), V, "window_sizes"),
    R("multiscale_heads_not_divisible", lambda c: _layer("MultiScaleAttention", embed_dim=32,
                                                          num_heads=4, window_sizes=[2, 4, -1]),
      V, "num_heads"),
    R("multiscale_string_window", lambda c: _layer("MultiScaleAttention", embed_dim=32, num_heads=4,
                                                    window_sizes=["4", -1]), V, "window_sizes"),
    R("sparse_zero_block_size", lambda c: _layer("SparseAttention", embed_dim=32, num_heads=4,
                                                  block_size=0), V, "block_size"),
    R("sparse_negative_global_blocks", lambda c: _layer("SparseAttention", embed_dim=32, num_heads=4,
                                                         num_global_blocks=-1), V, "num_global_blocks"),
    R("sparse_zero_stride", lambda c: _layer("SparseAttention", embed_dim=32, num_heads=4, stride=0),
      V, "stride"),
    R("sparse_zero_local_blocks", lambda c: _layer("SparseAttention", embed_dim=32, num_heads=4,
                                                    num_local_blocks=0), V, "num_local_blocks"),
    R("create_attention_unknown_type",
      lambda c: __import__("vishwam_keras").create_attention_layer("linear", embed_dim=32, num_heads=4),
      V, "attention_type"),
    # --- ops.dot_product_attention ---
    R("dpa_rank3_query", lambda c: _dpa(query_shape=(1, 4, 8)), V, "query"),
    R("dpa_head_dim_mismatch", lambda c: _dpa(key_shape=(1, 4, 2, 6)), V, "head_dim"),
    R("dpa_heads_not_dividing", lambda c: _dpa(key_shape=(1, 4, 3, 8)), V, "heads"),
    R("dpa_key_value_length_mismatch", lambda c: _dpa(value_shape=(1, 5, 2, 8)), V, "value"),
    R("dpa_zero_window", lambda c: _dpa(sliding_window=0), V, "sliding_window"),
    R("dpa_string_window", lambda c: _dpa(sliding_window="4"), V, "sliding_window"),
    R("dpa_negative_soft_cap", lambda c: _dpa(logit_soft_cap=-5.0), V, "logit_soft_cap"),
    R("dpa_unknown_implementation", lambda c: _dpa(implementation="flash3"), V, "implementation"),
    R("dpa_padding_mask_shape", lambda c: _dpa(padding_mask=np.ones((1, 3), bool)), V, "padding_mask"),
    R("dpa_zero_block_size", lambda c: _dpa(block_size_q=0), V, "block_size_q"),
    # --- SigLIPVisionEncoder ---
    R("siglip_patch_not_dividing", lambda c: _encoder(patch_size=3), V, "patch_size"),
    R("siglip_heads_not_dividing", lambda c: _encoder(num_heads=3), V, "num_heads"),
    R("siglip_unknown_pooling", lambda c: _encoder(pooling="max"), V, "pooling"),
    R("siglip_avg_pool_not_square", lambda c: _encoder(pooling="avg", num_pooled_tokens=3), V,
      "num_pooled_tokens"),
    R("siglip_dropout_one", lambda c: _encoder(dropout=1.0), V, "dropout"),
    R("siglip_zero_layers", lambda c: _encoder(num_layers=0), V, "num_layers"),
    R("siglip_wrong_image_size", lambda c: _encoder()(_ones(1, 16, 16, 3)), V, "images"),
    R("siglip_wrong_channels", lambda c: _encoder()(_ones(1, 8, 8, 1)), V, "images"),
    # --- CrossModalAttention, AdaptiveModalityFusion ---
    R("cross_kv_heads_not_dividing", lambda c: _cross(num_key_value_heads=3), V, "num_key_value_heads"),
    R("cross_zero_heads", lambda c: _cross(num_heads=0), V, "num_heads"),
    R("cross_wrong_text_width", lambda c: _cross()(_ones(1, 5, 16), _ones(1, 3, 32)), V, "text"),
    R("cross_vision_mask_shape", lambda c: _cross()(_ones(1, 5, 32), _ones(1, 3, 32),
                                                     vision_mask=_ones(1, 4)), V, "vision_mask"),
    R("fusion_zero_hidden_dim", lambda c: _layer("AdaptiveModalityFusion", hidden_dim=0), V, "hidden_dim"),
    R("fusion_wrong_text_width",
      lambda c: _layer("AdaptiveModalityFusion", hidden_dim=16)(_ones(2, 5, 8), _ones(2, 5, 16), _ones(2, 8)),
      V, "text_hidden"),
    R("fusion_pooled_rank4",
      lambda c: _layer("AdaptiveModalityFusion", hidden_dim=16)(_ones(2, 5, 16), _ones(2, 5, 16),
                                                                _ones(2, 3, 1, 8)),
      V, "pooled_image"),
    # --- VishwamBackbone ---
    R("backbone_zero_layers", lambda c: _backbone(num_layers=0), V, "num_layers"),
    R("backbone_heads_not_dividing", lambda c: _backbone(num_key_value_heads=3), V, "num_key_value_heads"),
    R("backbone_string_vocabulary", lambda c: _backbone(vocabulary_size="97"), V, "vocabulary_size"),
    R("backbone_negative_window", lambda c: _backbone(sliding_window_size=-4), V, "sliding_window_size"),
    R("backbone_unknown_layer_type", lambda c: _backbone(layer_types=["local", "dense", "global"]), V,
      "layer_types"),
    R("backbone_layer_types_wrong_length", lambda c: _backbone(layer_types=["global"]), V, "layer_types"),
    R("backbone_unknown_fusion", lambda c: _backbone(fusion_type="concat"), V, "fusion_type"),
    R("backbone_vision_width_mismatch",
      lambda c: _backbone(vision_encoder=_encoder(output_dim=16)), V, "output_dim"),
    R("backbone_cross_attn_layer_out_of_range",
      lambda c: _backbone(vision_encoder=_encoder(), fusion_type="cross_attention", cross_attn_layers=[5]),
      V, "cross_attn_layers"),
    R("backbone_ids_above_vocabulary", lambda c: c.backbone(_tokens([[1, 2, 200]])), V, "token_ids"),
    R("backbone_negative_ids", lambda c: c.backbone(_tokens([[1, -2, 3]])), V, "token_ids"),
    R("backbone_float_ids", lambda c: c.backbone(_tokens(np.array([[1.5, 2.0]]))), T, "token_ids"),
    R("backbone_empty_batch", lambda c: c.backbone(_tokens(np.zeros((0, 4), "int32"))), V, "token_ids"),
    R("backbone_padding_mask_shape", lambda c: c.backbone(_tokens([[1, 2, 3]], mask=[[1, 1]])), V,
      "padding_mask"),
    R("backbone_missing_token_ids", lambda c: c.backbone({"padding_mask": _ones(1, 3, dtype="int32")}), V,
      "token_ids"),
    R("backbone_rank3_ids", lambda c: c.backbone(_tokens(np.ones((1, 2, 3), "int32"))), VT, "token_ids"),
    R("backbone_string_inputs", lambda c: c.backbone("To be"), VT, "inputs"),
    R("backbone_images_rank3", lambda c: c.vision_backbone(
        {"token_ids": np.ones((1, 4), "int32"), "images": _ones(8, 8, 3)}), V, "images"),
    R("backbone_images_wrong_size", lambda c: c.vision_backbone(
        {"token_ids": np.ones((1, 4), "int32"), "images": _ones(1, 1, 16, 16, 3)}), V, "images"),
    R("backbone_nan_images", lambda c: _refusing(c.vision_backbone, "__call__",
        {"token_ids": np.ones((1, 4), "int32"), "images": _nan_image()[None, None]}), V, "images"),
    # --- VishwamCausalLM: call, compile, generate ---
    R("lm_call_without_inputs", lambda c: c.lm(), V, "input_ids"),
    R("lm_call_ids_above_vocabulary", lambda c: c.lm(input_ids=np.array([[1, 500]])), V, "token_ids"),
    R("lm_unknown_sampler", lambda c: _compile_then_restore(c.lm, sampler="fastest"), V, "sampler"),
    R("lm_generate_ids_above_vocabulary", lambda c: _generate(c.lm, _tokens([[2, 150, 0]], [[1, 1, 0]])),
      V, "token_ids"),
    R("lm_generate_empty_prompt", lambda c: _generate(c.lm, _tokens(np.zeros((1, 4), "int32"),
                                                                    np.zeros((1, 4), "int32"))),
      V, "empty prompt"),
    R("lm_generate_empty_batch", lambda c: _generate(c.lm, _tokens(np.zeros((0, 4), "int32"))), V,
      "token_ids|empty"),
    R("lm_generate_max_length_zero", lambda c: _generate(c.lm, _tokens([[2, 5]]), max_length=0), V,
      "max_length"),
    R("lm_generate_max_length_string", lambda c: _generate(c.lm, _tokens([[2, 5]]), max_length="8"), V,
      "max_length"),
    R("lm_generate_float_ids", lambda c: _generate(c.lm, _tokens(np.array([[2.0, 5.5]]))), T, "token_ids"),
    R("lm_generate_strings_without_preprocessor", lambda c: _generate(c.lm, "To be"), VT,
      "preprocessor|inputs"),
    R("lm_generate_stop_token_outside_vocabulary",
      lambda c: _generate(c.lm, _tokens([[2, 5]]), stop_token_ids=[100_000]), V, "stop_token_ids"),
    R("lm_generate_prompt_longer_than_max_length",
      lambda c: _generate(c.text_lm, "word " * 40, max_length=8), V, "max_length"),
    R("lm_generate_empty_string_batch", lambda c: _generate(c.text_lm, []), V, "empty batch"),
    # --- VishwamCausalLMPreprocessor, VishwamTokenizer ---
    R("preprocessor_non_string_prompts", lambda c: c.preprocessor.generate_preprocess([1, 2]), T, "prompts"),
    R("preprocessor_dict_without_prompts",
      lambda c: c.preprocessor.generate_preprocess({"text": ["hi"]}), V, "prompts"),
    R("preprocessor_prompt_too_long", lambda c: c.preprocessor.generate_preprocess(["word " * 40]), V,
      "max_length"),
    R("preprocessor_image_placeholder_without_converter",
      lambda c: c.preprocessor.generate_preprocess(["<start_of_image> hi"]), V, "start_of_image"),
    R("preprocessor_images_without_converter",
      lambda c: c.preprocessor.generate_preprocess({"prompts": ["hi"], "images": [[_nan_image()]]}), V,
      "images"),
    R("preprocessor_more_images_than_placeholders",
      lambda c: c.mm_preprocessor.generate_preprocess({"prompts": ["hi"], "images": [[_ones(8, 8, 3)]]}),
      V, "images"),
    R("preprocessor_image_lists_per_prompt",
      lambda c: c.mm_preprocessor.generate_preprocess(
          {"prompts": ["<start_of_image> a", "b"], "images": [[_ones(8, 8, 3)]]}), V, "images"),
    R("preprocessor_image_rank1",
      lambda c: c.mm_preprocessor.generate_preprocess(
          {"prompts": ["<start_of_image> a"], "images": [[_ones(8)]]}), V, "images"),
    R("preprocessor_nan_image",
      lambda c: c.mm_preprocessor.generate_preprocess(
          {"prompts": ["<start_of_image> a"], "images": [[_nan_image()]]}), V, "NaN"),
    R("preprocessor_multi_turn_responses_not_matching",
      lambda c: c.mm_preprocessor({"prompts": np.array([["a", "b"]]), "responses": np.array([" c"]),
                                   "images": _ones(1, 1, 8, 8, 3)}), V, "responses"),
    R("preprocessor_multi_turn_counts_not_matching",
      lambda c: c.mm_preprocessor({"prompts": np.array([["a", "b"]]), "responses": np.array([[" c", " d", " e"]]),
                                   "images": _ones(1, 1, 8, 8, 3)}), V, "responses"),
    R("pipeline_zero_questions_per_example",
      lambda c: __import__("vishwam_keras.data.pipelines", fromlist=["_"]).multimodal_stage_dataset(
          batch_size=4, questions_per_example=0), V, "questions_per_example"),
    R("preprocessor_zero_sequence_length",
      lambda c: _layer("VishwamCausalLMPreprocessor", tokenizer=c.tokenizer, sequence_length=0), V,
      "sequence_length"),
    R("preprocessor_zero_vision_tokens",
      lambda c: _layer("VishwamCausalLMPreprocessor", tokenizer=c.tokenizer, num_vision_tokens_per_image=0),
      V, "num_vision_tokens_per_image"),
    R("tokenizer_missing_proto_file",
      lambda c: _layer("VishwamTokenizer", proto=os.path.join(c.tmp, "missing.spm")), V, "proto"),
    R("tokenizer_garbage_proto", lambda c: _layer("VishwamTokenizer", proto=b"not a model"), V, "proto"),
    R("tokenizer_integer_proto", lambda c: _layer("VishwamTokenizer", proto=123), VT, "proto"),
    # --- VishwamImageConverter ---
    R("converter_zero_image_size", lambda c: _layer("VishwamImageConverter", image_size=0), V, "image_size"),
    R("converter_string_image_size", lambda c: _layer("VishwamImageConverter", image_size="224"), V,
      "image_size"),
    R("converter_two_channels", lambda c: _layer("VishwamImageConverter", num_channels=2), V, "num_channels"),
    R("converter_zero_std", lambda c: _layer("VishwamImageConverter", std=0.0), V, "std"),
    R("converter_nan_mean", lambda c: _layer("VishwamImageConverter", mean=float("nan")), V, "mean"),
    R("converter_reversed_value_range", lambda c: _layer("VishwamImageConverter", value_range=(255, 0)), V,
      "value_range"),
    R("converter_rank2_image", lambda c: c.converter(_ones(8, 8)), V, "images"),
    R("converter_four_channels", lambda c: c.converter(_ones(8, 8, 4)), V, "images"),
    R("converter_nan_pixels", lambda c: c.converter(_nan_image()), V, "NaN"),
    R("converter_inf_pixels", lambda c: c.converter(np.full((1, 8, 8, 3), np.inf, "float32")), V, "Inf"),
    R("converter_string_image", lambda c: c.converter("photo.png"), VT, "images"),
    R("converter_string_pixels", lambda c: c.converter(np.full((8, 8, 3), "a")), VT, "images"),
    R("converter_zero_height", lambda c: c.converter(np.zeros((0, 8, 3), "float32")), V, "images"),
    R("converter_bool_pixels", lambda c: c.converter(np.ones((8, 8, 3), bool)), T, "images"),
    R("converter_ragged_list", lambda c: c.converter([_ones(8, 8, 3), _ones(4, 4, 3)]), V, "images"),
    # --- schedules ---
    R("warmup_cosine_negative_peak", lambda c: _schedule("WarmupCosineSchedule", -1e-3, 10, 100), V,
      "peak_learning_rate"),
    R("warmup_cosine_nan_peak", lambda c: _schedule("WarmupCosineSchedule", float("nan"), 10, 100), V,
      "peak_learning_rate"),
    R("warmup_cosine_total_below_warmup", lambda c: _schedule("WarmupCosineSchedule", 1e-3, 100, 10), V,
      "total_steps"),
    R("warmup_cosine_string_warmup", lambda c: _schedule("WarmupCosineSchedule", 1e-3, "10", 100), V,
      "warmup_steps"),
    R("warmup_cosine_final_above_peak",
      lambda c: _schedule("WarmupCosineSchedule", 1e-3, 10, 100, final_learning_rate=1e-2), V,
      "final_learning_rate"),
    R("adaptive_boundaries_not_increasing",
      lambda c: _schedule("AdaptiveLearningRateSchedule", 1e-3, stage_boundaries=[50, 20]), V,
      "stage_boundaries"),
    R("adaptive_stage_rates_wrong_length",
      lambda c: _schedule("AdaptiveLearningRateSchedule", 1e-3, stage_boundaries=[50],
                          stage_learning_rates=[1e-3]), V, "stage_learning_rates"),
    R("adaptive_warmup_longer_than_stage",
      lambda c: _schedule("AdaptiveLearningRateSchedule", 1e-3, stage_boundaries=[10], warmup_steps=20,
                          total_steps=40), V, "warmup_steps"),
    R("adaptive_floor_ratio_above_one",
      lambda c: _schedule("AdaptiveLearningRateSchedule", 1e-3, final_learning_rate_ratio=2.0), V,
      "final_learning_rate_ratio"),
    R("adaptive_string_learning_rate",
      lambda c: _schedule("AdaptiveLearningRateSchedule", "1e-3"), V, "learning_rate"),
    R("adaptive_from_no_stages",
      lambda c: __import__("vishwam_keras").AdaptiveLearningRateSchedule.from_stages([], 1e-3), V, "stages"),
    R("adaptive_lr_callback_factor_one", lambda c: _schedule("AdaptiveLRCallback", factor=1.0), V, "factor"),
    R("adaptive_lr_callback_spike_below_one", lambda c: _schedule("AdaptiveLRCallback", spike_factor=0.5), V,
      "spike_factor"),
    # --- CurriculumStage, curriculum ---
    R("stage_zero_steps", lambda c: _stage(steps=0), V, "steps"),
    R("stage_string_steps", lambda c: _stage(steps="10"), V, "steps"),
    R("stage_unknown_modality", lambda c: _stage(modalities=["audio"]), V, "modalities"),
    R("stage_empty_name", lambda c: _stage(name=""), V, "name"),
    R("stage_frozen_string", lambda c: _stage(frozen="vision*"), V, "frozen"),
    R("stage_negative_mixture", lambda c: _stage(data_mixture={"text": -1.0}), V, "data_mixture"),
    R("stage_negative_learning_rate", lambda c: _stage(learning_rate=-1e-3), V, "learning_rate"),
    R("stage_negative_loss_scale", lambda c: _stage(loss_scales={"contrastive": -1.0}), V, "loss_scales"),
    R("stage_nan_loss_scale", lambda c: _stage(loss_scales={"contrastive": float("nan")}), V, "loss_scales"),
    R("stage_unknown_field",
      lambda c: __import__("vishwam_keras").CurriculumStage.from_dict({"name": "a", "steps": 1, "epochs": 2}),
      V, "epochs"),
    R("curriculum_total_steps_two", lambda c: __import__("vishwam_keras").default_curriculum(2), V,
      "total_steps"),
    R("curriculum_duplicate_stage_names",
      lambda c: _training_config(curriculum_stages=[{"name": "a", "steps": 1}, {"name": "a", "steps": 2}]),
      V, "unique"),
    R("curriculum_callback_empty_stages", lambda c: __import__("vishwam_keras").CurriculumCallback([]), V,
      "stages"),
    # --- AdvancedTrainingConfig, pipeline ---
    R("training_zero_batch_size", lambda c: _training_config(batch_size=0), V, "batch_size"),
    R("training_negative_learning_rate", lambda c: _training_config(learning_rate=-1.0), V, "learning_rate"),
    R("training_string_learning_rate", lambda c: _training_config(learning_rate="1e-3"), VT,
      "learning_rate"),
    R("training_string_total_steps", lambda c: _training_config(total_steps="100"), V, "total_steps"),
    R("training_unknown_preset_model", lambda c: _training_config(model="vishwam_9b"), V, "vishwam_9b"),
    R("training_unknown_loss_weighting", lambda c: _training_config(loss_weighting="magic"), V,
      "loss_weighting"),
    R("training_nan_contrastive_bias", lambda c: _training_config(contrastive_initial_bias=float("nan")), V,
      "contrastive_initial_bias"),
    R("causal_lm_string_contrastive_bias",
      lambda c: __import__("vishwam_keras").VishwamCausalLM(c.vision_backbone, contrastive_initial_bias="-3"),
      V, "contrastive_initial_bias"),
    R("causal_lm_unknown_contrastive_pooling",
      lambda c: __import__("vishwam_keras").VishwamCausalLM(c.vision_backbone, contrastive_pooling="max"),
      V, "contrastive_pooling"),
    R("pipeline_config_not_a_config",
      lambda c: __import__("vishwam_keras").main_training_pipeline(config={"batch_size": 4}), T, "config"),
    R("trainer_config_dict_bad_field",
      lambda c: __import__("vishwam_keras").MultimodalTrainer({"batch_size": 0}), V, "batch_size"),
    # --- checkpoints ---
    R("checkpoint_state_without_step",
      lambda c: _checkpointing().save_checkpoint(c.empty_dir("ckpt_a"), c.small_model, {"epoch": 1}), V,
      "step"),
    R("checkpoint_negative_step",
      lambda c: _checkpointing().save_checkpoint(c.empty_dir("ckpt_b"), c.small_model, {"step": -1}), V,
      "step"),
    R("checkpoint_state_not_json",
      lambda c: _checkpointing().save_checkpoint(c.empty_dir("ckpt_c"), c.small_model,
                                                 {"step": 1, "rng": object()}), V, "state"),
    R("checkpoint_keep_zero",
      lambda c: _checkpointing().save_checkpoint(c.empty_dir("ckpt_d"), c.small_model, {"step": 1}, keep=0),
      V, "keep"),
    R("checkpoint_callback_every_zero",
      lambda c: __import__("vishwam_keras").CheckpointCallback(c.tmp, every_steps=0), V, "every_steps"),
    R("checkpoint_load_missing_folder",
      lambda c: _checkpointing().load_checkpoint(c.empty_dir("ckpt_missing"), c.small_model), V, "state.json"),
    # --- from_preset ---
    R("preset_unknown_name", lambda c: _from_preset("VishwamCausalLM", "vishwam_9b"), V, "vishwam_9b"),
    R("preset_integer", lambda c: _from_preset("VishwamBackbone", 7), V, "preset"),
    R("preset_empty_string", lambda c: _from_preset("VishwamBackbone", ""), V, "preset"),
    R("preset_folder_without_config", lambda c: _from_preset("VishwamBackbone", c.empty_dir("empty")), V,
      "config.json"),
    R("preset_preprocessor_unknown_name",
      lambda c: _from_preset("VishwamCausalLMPreprocessor", "vishwam_9b"), V, "vishwam_9b"),
    R("preset_image_converter_unknown_name",
      lambda c: _from_preset("VishwamImageConverter", "vishwam_9b"), V, "vishwam_9b"),
    R("preset_tokenizer_unknown_name", lambda c: _from_preset("VishwamTokenizer", "vishwam_9b"), V,
      "vishwam_9b"),
    R("model_factory_unknown_field",
      lambda c: __import__("vishwam_keras").create_multimodal_model(embed_dims=32), T, "embed_dims"),
]

assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"
