import warnings

import keras
import numpy as np
import pytest

from conftest import tiny_backbone_kwargs
from vishwam_keras import VishwamBackbone, VishwamCausalLM


def _lm(**overrides):
    return VishwamCausalLM(VishwamBackbone(**tiny_backbone_kwargs(**overrides)))


def _weight_bytes(model):
    def itemsize(dtype):
        dtype = keras.backend.standardize_dtype(dtype)
        return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize

    return sum(int(np.prod(w.shape)) * itemsize(w.dtype) for w in model.weights)


def _values(weights):
    return {w.path: keras.ops.convert_to_numpy(w.value) for w in weights}


def _prompts():
    rng = np.random.default_rng(0)
    token_ids = np.zeros((4, 24), "int32")
    padding_mask = np.zeros((4, 24), "int32")
    for row, length in enumerate([3, 5, 8, 4]):
        token_ids[row, :length] = rng.integers(4, 256, length)
        padding_mask[row, :length] = 1
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _batch():
    rng = np.random.default_rng(1)
    token_ids = rng.integers(1, 97, (4, 10)).astype("int32")
    padding_mask = np.ones_like(token_ids)
    padding_mask[2, 7:] = 0
    return {"token_ids": token_ids * padding_mask, "padding_mask": padding_mask}


# --- int8 quantization ------------------------------------------------------------------


def test_int8_quantize_then_generate():
    lm = _lm(vocabulary_size=256, hidden_dim=64, intermediate_dim=128, head_dim=16)
    lm.compile(sampler="greedy")
    prompts = _prompts()
    float_tokens = np.asarray(lm.generate(prompts, stop_token_ids=None)["token_ids"])
    float_bytes = _weight_bytes(lm)

    with warnings.catch_warnings():  # Keras warns for every layer without weights to quantize
        warnings.simplefilter("ignore", UserWarning)
        lm.quantize("int8")
    kernels = [w for w in lm.weights if w.path.endswith(("/kernel", "/embeddings"))]
    assert kernels and all(keras.backend.standardize_dtype(w.dtype) == "int8" for w in kernels)
    # float32 -> int8 kernels and embedding; float32 scales and norms remain. Measured 0.27.
    ratio = _weight_bytes(lm) / float_bytes
    assert 0.2 < ratio < 0.3, ratio

    int8_tokens = np.asarray(lm.generate(prompts, stop_token_ids=None)["token_ids"])
    generated = prompts["padding_mask"] == 0
    np.testing.assert_array_equal(int8_tokens[~generated], prompts["token_ids"][~generated])
    # Greedy decoding of a random model is fragile (near-ties flip, then paths diverge);
    # measured agreement: 97% (JAX), 100% (TensorFlow) of generated tokens.
    assert (int8_tokens[generated] == float_tokens[generated]).mean() >= 0.8


def test_int8_quantize_a_model_with_its_preprocessor_after_generate():
    """`quantize` visits every sublayer, the preprocessor's too: none may be left unbuilt."""
    from vishwam_keras import VishwamCausalLMPreprocessor

    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=12)
    lm = VishwamCausalLM(
        VishwamBackbone(**tiny_backbone_kwargs(vocabulary_size=preprocessor.tokenizer.vocabulary_size())),
        preprocessor=preprocessor,
    )
    lm.compile(sampler="greedy")
    lm.generate(["To be"], max_length=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lm.quantize("int8")
    assert keras.backend.standardize_dtype(lm.backbone.token_embedding.embeddings.dtype) == "int8"
    assert isinstance(lm.generate("To be", max_length=10), str)


# --- LoRA -------------------------------------------------------------------------------


def _train_two_steps(lm):
    batch = _batch()
    lm.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    labels = np.roll(batch["token_ids"], -1, axis=1)
    for _ in range(2):  # lora_kernel_b starts at zero: kernel_a moves from the second step
        lm.train_on_batch(batch, labels, sample_weight=batch["padding_mask"])


def test_lora_trains_only_query_value_adapters_and_reloads(tmp_path):
    lm = _lm()
    base = _values(lm.backbone.weights)
    lm.backbone.enable_lora(rank=4)
    trainable = sorted(w.path for w in lm.trainable_weights)
    assert trainable == sorted(
        f"decoder_block_{i}/attention/{name}/lora_kernel_{ab}"
        for i in range(3) for name in ("query", "value") for ab in "ab"
    )

    before = _values(lm.backbone.weights)  # base weights and fresh adapters
    _train_two_steps(lm)
    after = _values(lm.backbone.weights)
    assert len(after) == len(base) + 12
    for path, value in after.items():
        if "lora_kernel" in path:
            assert not np.array_equal(value, before[path]), f"{path} did not train"
        else:
            np.testing.assert_array_equal(value, base[path], err_msg=f"{path} changed")

    batch = _batch()
    expected = keras.ops.convert_to_numpy(lm(batch))
    # LoRA weights alone, onto a fresh copy of the base model.
    lora_path = str(tmp_path / "adapters.lora.h5")
    lm.backbone.save_lora_weights(lora_path)
    fresh = _lm()
    for weight in fresh.backbone.weights:
        weight.assign(base[weight.path])
    fresh.backbone.load_lora_weights(lora_path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fresh(batch)), expected, atol=1e-6)
    # The whole model: Keras folds the adapters into the kernels when saving (EinsumDense
    # save_own_variables merges LoRA), so the reload computes the same, without adapters.
    model_path = str(tmp_path / "model.keras")
    lm.save(model_path)
    with warnings.catch_warnings():  # CausalLM's custom compile is not restored
        warnings.simplefilter("ignore", UserWarning)
        reloaded = keras.saving.load_model(model_path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(batch)), expected, atol=1e-5)
    assert not [w for w in reloaded.weights if "lora" in w.path]


# --- SavedModel export ------------------------------------------------------------------


@pytest.mark.skipif(
    keras.backend.backend() not in ("jax", "tensorflow"),
    reason="tf_saved_model export needs the JAX or TensorFlow backend",
)
@pytest.mark.parametrize("which", ["backbone", "causal_lm"])
def test_export_tf_saved_model_and_reload(tmp_path, which):
    tf = pytest.importorskip("tensorflow")
    lm = _lm()
    model = lm.backbone if which == "backbone" else lm
    kwargs = {}
    if keras.backend.backend() == "jax":
        # One length symbol for both inputs (Keras would give each its own).
        shapes = {"token_ids": "(batch, length)", "padding_mask": "(batch, length)"}
        kwargs["jax2tf_kwargs"] = {"polymorphic_shapes": [shapes]}
    path = str(tmp_path / which)
    model.export(path, format="tf_saved_model", verbose=False, **kwargs)
    reloaded = tf.saved_model.load(path)

    short = {"token_ids": np.full((1, 3), 5, "int32"), "padding_mask": np.ones((1, 3), "int32")}
    for batch in (_batch(), short):  # two batch sizes and lengths through one signature
        expected = keras.ops.convert_to_numpy(model(batch))
        served = reloaded.serve({k: tf.constant(v) for k, v in batch.items()}).numpy()
        assert served.shape == expected.shape
        np.testing.assert_allclose(served, expected, atol=1e-5)
