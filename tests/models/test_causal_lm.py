import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_backbone_kwargs
from vishwam_keras import VishwamBackbone, VishwamCausalLM
from vishwam_keras.models.causal_lm import prefill_bucket


def _lm(**overrides):
    return VishwamCausalLM(VishwamBackbone(**tiny_backbone_kwargs(**overrides)))


def _logits(lm, token_ids):
    mask = np.ones_like(token_ids)
    return keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": mask}))


@pytest.mark.parametrize("prefill_length", [0, 1, 5])
def test_cached_decoding_logits_equal_full_forward(prefill_length):
    lm = _lm()  # window 4, so the ring buffer wraps over 14 tokens
    token_ids = np.random.randint(0, 97, (2, 14)).astype("int32")
    full = _logits(lm, token_ids)
    cache = lm._build_cache(keras.ops.convert_to_tensor(token_ids), prefill_length)
    for t in range(prefill_length, 14):
        logits, _, cache = lm.call_with_cache(token_ids[:, t : t + 1], cache, t)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(logits)[:, 0], full[:, t], atol=1e-4)


def test_generate_greedy_equals_argmax_of_full_recomputation():
    lm = _lm()
    lm.compile(sampler="greedy")
    token_ids = np.zeros((3, 16), "int32")
    padding_mask = np.zeros((3, 16), "int32")
    for row, length in enumerate([2, 7, 11]):  # different prompt lengths in one batch
        token_ids[row, :length] = np.random.randint(4, 97, length)
        padding_mask[row, :length] = 1
    out = lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None)
    generated = np.asarray(out["token_ids"])
    np.testing.assert_array_equal(generated[padding_mask == 1], token_ids[padding_mask == 1])
    full = _logits(lm, generated)
    for row, length in enumerate([2, 7, 11]):
        expected = full[row, length - 1 : 15].argmax(-1)
        np.testing.assert_array_equal(generated[row, length:], expected)


def test_generate_stops_at_stop_token_and_masks_the_rest():
    lm = _lm()
    lm.compile(sampler="greedy")
    token_ids = np.array([[2, 5, 9, 0, 0, 0, 0, 0, 0, 0]], "int32")
    padding_mask = (token_ids > 0).astype("int32")
    free = np.asarray(lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None)["token_ids"])
    stop = int(free[0, 4])
    out = lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=(stop,))
    mask = np.asarray(out["padding_mask"])[0]
    first_stop = 3 + int(np.argmax(np.asarray(out["token_ids"])[0, 3:] == stop))
    assert mask[: first_stop + 1].all() and not mask[first_stop + 1 :].any()


@pytest.mark.parametrize("sampler", ["greedy", "top_k", "top_p", "random"])
def test_samplers_run_compiled(sampler):
    lm = _lm()
    lm.compile(sampler=sampler)
    x = {"token_ids": np.array([[2, 8, 0, 0, 0, 0]]), "padding_mask": np.array([[1, 1, 0, 0, 0, 0]])}
    out = lm.generate(x, stop_token_ids=None)
    ids = np.asarray(out["token_ids"])
    assert ids.shape == (1, 6) and ids.min() >= 0 and ids.max() < 97


def test_prefill_buckets_limit_compilations():
    assert [prefill_bucket(n) for n in (1, 2, 3, 9, 64, 65, 200)] == [0, 1, 2, 8, 32, 64, 192]
    lm = _lm()
    lm.compile(sampler="greedy")
    for length in (9, 10, 11, 12):
        x = {"token_ids": np.full((1, 14), 5), "padding_mask": (np.arange(14) < length)[None].astype("int32")}
        lm.generate(x, stop_token_ids=None)
    assert sorted(plan[0] for plan in lm._generate_functions) == [8]


def test_ring_buffer_cache_is_smaller_than_full_length():
    lm = _lm(num_layers=6, sliding_window_pattern=6, sliding_window_size=16)
    ours = lm.cache_bytes(batch_size=1, max_length=1024)
    full_length = 6 * 2 * 1024 * 2 * 8 * 4
    assert ours == (5 * 16 + 1024) * 2 * 2 * 8 * 4
    assert ours < 0.2 * full_length


def test_fit_reduces_loss_and_predict_on_tf_data():
    lm = _lm()
    lm.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tokens = np.tile(np.arange(4, 14, dtype="int32"), (8, 1))
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones_like(tokens[:, :-1])}
    history = lm.fit(x, tokens[:, 1:], epochs=8, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    logits = lm.predict(tf.data.Dataset.from_tensor_slices(x).batch(4), verbose=0)
    assert logits.shape == (8, 9, 97) and logits.dtype == np.float32


def test_bad_generate_inputs():
    lm = _lm()
    x = {"token_ids": np.array([[2, 150, 0]]), "padding_mask": np.array([[1, 1, 0]])}
    with pytest.raises(ValueError, match="token_ids"):
        lm.generate(x, stop_token_ids=None)
    empty = {"token_ids": np.zeros((1, 4), "int32"), "padding_mask": np.zeros((1, 4), "int32")}
    with pytest.raises(ValueError, match="empty prompt"):
        lm.generate(empty, stop_token_ids=None)
    with pytest.raises(ValueError, match="max_length"):
        lm.generate(x, max_length=0, stop_token_ids=None)
