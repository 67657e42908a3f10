import os

import keras
import numpy as np
import pytest

from conftest import tiny_vision_backbone
from vishwam_keras import VishwamCausalLM, VishwamCausalLMPreprocessor
from vishwam_keras.models.image_converter import VishwamImageConverter

IMG = 6  # <image_soft_token>
SOI, EOI = 4, 5


def _batch(images_per_row=(1, 2, 0), tokens_per_image=2, length=16, text_before=None):
    """Token rows with image spans (<soi> IMG*N <eoi>) followed by text; `text_before`
    (one count per row) puts that many text tokens before the first image."""
    rows, max_images = [], max(images_per_row)
    for i, count in enumerate(images_per_row):
        row = [2] + list(np.random.randint(20, 200, text_before[i] if text_before else 0))
        for _ in range(count):
            row += [SOI] + [IMG] * tokens_per_image + [EOI]
        row += list(np.random.randint(20, 200, 3))
        rows.append(row)
    token_ids = np.zeros((len(rows), length), "int32")
    padding_mask = np.zeros((len(rows), length), "int32")
    for i, row in enumerate(rows):
        token_ids[i, : len(row)] = row
        padding_mask[i, : len(row)] = 1
    images = np.random.uniform(-1, 1, (len(rows), max_images, 8, 8, 3)).astype("float32")
    image_mask = (np.arange(max_images)[None] < np.array(images_per_row)[:, None]).astype("int32")
    return {"token_ids": token_ids, "padding_mask": padding_mask, "images": images, "image_mask": image_mask}


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_interleave_places_image_tokens_in_order():
    backbone = tiny_vision_backbone()
    x = _batch((2,))
    vision = backbone.encode_images(x["images"], x["image_mask"])
    embeddings = backbone.embed_tokens(x["token_ids"])
    mixed, span_ids = backbone.interleave(embeddings, x["token_ids"], vision[0])
    positions = np.nonzero(x["token_ids"][0] == IMG)[0]
    np.testing.assert_allclose(_np(mixed)[0, positions], _np(vision[0])[0], atol=1e-6)
    assert _np(span_ids)[0, positions].tolist() == [1, 1, 2, 2]
    text = x["token_ids"][0] != IMG
    np.testing.assert_allclose(_np(mixed)[0, text], _np(embeddings)[0, text], atol=1e-6)


def test_attention_is_bidirectional_inside_an_image_and_causal_elsewhere():
    backbone = tiny_vision_backbone(tokens_per_image=3)
    x = _batch((2,), tokens_per_image=3)
    vision = list(backbone.encode_images(x["images"], x["image_mask"]))
    base = _np(backbone.decode(x, vision=vision))
    perturbed = _np(vision[0]).copy()
    perturbed[:, 2] += 1.0  # the last token of the first image
    vision[0] = keras.ops.convert_to_tensor(perturbed)
    changed = np.abs(_np(backbone.decode(x, vision=vision)) - base).max(-1)[0] > 1e-6
    positions = np.nonzero(x["token_ids"][0] == IMG)[0]
    first_image, second_image = positions[:3], positions[3:]
    assert changed[first_image].all()  # earlier tokens of the same image see it
    assert not changed[: first_image[0]].any()  # text before the image does not
    assert changed[second_image].all() and changed[second_image[-1] + 1 :].any()


@pytest.mark.parametrize("fusion_type", ["cross_attention", "adaptive_gate"])
def test_gated_fusion_is_identity_at_init_and_opens_after_training(fusion_type):
    backbone = tiny_vision_backbone(fusion_type)
    lm = VishwamCausalLM(backbone)
    x = _batch((1, 1))
    x["token_ids"][x["token_ids"] == IMG] = 30  # cross-attention only: no placeholders
    text_only = dict(x, images=np.zeros((2, 0, 8, 8, 3), "float32"), image_mask=np.zeros((2, 0), "int32"))
    np.testing.assert_array_equal(_np(lm(x)), _np(lm(text_only)))
    lm.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    lm.fit(x, x["token_ids"], epochs=1, batch_size=2, verbose=0)
    assert np.abs(_np(lm(x)) - _np(lm(text_only))).max() > 1e-6


def test_mixed_batches_fit_predict_and_generate():
    lm = VishwamCausalLM(tiny_vision_backbone("adaptive_gate"))
    lm.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), sampler="greedy")
    x = _batch((0, 1, 2))
    lm.fit(x, x["token_ids"], batch_size=3, epochs=1, verbose=0)
    assert lm.predict(x, verbose=0).shape == (3, 16, 8192)
    out = lm.generate(x, stop_token_ids=None)
    assert out["token_ids"].shape == (3, 16)


@pytest.mark.parametrize("fusion_type", ["interleave", "adaptive_gate"])
def test_cached_multimodal_generate_equals_full_recomputation(fusion_type):
    lm = VishwamCausalLM(tiny_vision_backbone(fusion_type))
    lm.compile(sampler="greedy")
    x = _batch((1, 2, 0), length=20)
    out = np.asarray(lm.generate(x, stop_token_ids=None)["token_ids"])
    full = _np(lm(dict(x, token_ids=out, padding_mask=np.ones_like(out))))
    lengths = x["padding_mask"].sum(-1)
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(out[row, :length], x["token_ids"][row, :length])
        np.testing.assert_array_equal(out[row, length:], full[row, length - 1 : 19].argmax(-1))


def test_cached_generate_with_text_before_the_image_equals_full_recomputation():
    # Prompts with text before the image ("Question: ... <start_of_image> Answer:") put
    # each row's image at another offset; the prefill runs past the shortest prompt to
    # cover every image, and the rows' later prompt tokens keep their prefilled keys.
    lm = VishwamCausalLM(tiny_vision_backbone())
    lm.compile(sampler="greedy")
    x = _batch((1, 1, 2), length=24, text_before=(5, 1, 3))
    out = np.asarray(lm.generate(x, stop_token_ids=None)["token_ids"])
    full = _np(lm(dict(x, token_ids=out, padding_mask=np.ones_like(out))))
    lengths = x["padding_mask"].sum(-1)
    assert len(set(lengths.tolist())) == 3
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(out[row, :length], x["token_ids"][row, :length])
        np.testing.assert_array_equal(out[row, length:], full[row, length - 1 : 23].argmax(-1))


def test_keras_and_preset_save_load_with_images(tmp_path):
    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=24)
    preprocessor.image_converter = VishwamImageConverter(image_size=8)
    preprocessor.num_vision_tokens_per_image = 2
    lm = VishwamCausalLM(tiny_vision_backbone("adaptive_gate"), preprocessor=preprocessor)
    x = _batch((1, 2))
    path = os.path.join(tmp_path, "model.keras")
    lm.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(lm(x)), _np(restored(x)), atol=1e-5)
    lm.save_to_preset(str(tmp_path / "preset"))
    from_preset = VishwamCausalLM.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(_np(lm(x)), _np(from_preset(x)), atol=1e-5)
    assert from_preset.preprocessor.image_converter is not None


def test_generate_with_strings_and_images():
    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=32)
    preprocessor.image_converter = VishwamImageConverter(image_size=8)
    preprocessor.num_vision_tokens_per_image = 2
    lm = VishwamCausalLM(tiny_vision_backbone("interleave"), preprocessor=preprocessor)
    lm.compile(sampler="greedy")
    image = np.random.randint(0, 255, (20, 24, 1)).astype("uint8")  # any size, grayscale
    out = lm.generate(
        {"prompts": ["<start_of_image> What is this?", "No image here."], "images": [[image], []]},
        max_length=32,
    )
    assert len(out) == 2 and all(isinstance(text, str) for text in out)
    # fit on prompts/responses with images: only response tokens carry loss weight
    x, y, w = preprocessor(
        {"prompts": ["<start_of_image> Caption:"], "responses": [" a shoe"],
         "images": np.zeros((1, 1, 20, 20, 3), "uint8")}
    )
    w = np.asarray(w)[0]
    assert w.sum() == len(np.asarray(preprocessor.tokenizer(" a shoe"))) + 1  # + <eos>
    assert not w[np.asarray(y)[0] == IMG].any() and (np.asarray(y)[0] == IMG).sum() == 2


@pytest.mark.parametrize(
    "inputs,error,match",
    [
        ({"prompts": ["two images"], "images": [[np.zeros((8, 8, 3))]]}, ValueError, "placeholder"),
        ({"prompts": ["<start_of_image> where?"], "images": [[]]}, ValueError, "placeholder"),
        ({"prompts": ["<start_of_image>"], "images": [[np.full((8, 8, 3), np.nan)]]}, ValueError, "NaN|finite|Inf"),
        ({"prompts": ["<start_of_image>"], "images": [[np.zeros((2, 8, 8, 3, 1))]]}, ValueError, "images|shape|rank"),
    ],
)
def test_bad_multimodal_inputs(inputs, error, match):
    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=16)
    preprocessor.image_converter = VishwamImageConverter(image_size=8)
    preprocessor.num_vision_tokens_per_image = 2
    lm = VishwamCausalLM(tiny_vision_backbone(), preprocessor=preprocessor)
    with pytest.raises(error, match=match):
        lm.generate(inputs, max_length=16)


def test_contrastive_loss_is_reported_and_only_for_image_batches():
    lm = VishwamCausalLM(tiny_vision_backbone("interleave"))
    lm.compile(optimizer="adam")
    x = _batch((1, 1, 1, 1))
    history = lm.fit(x, x["token_ids"], batch_size=4, epochs=2, verbose=0).history
    assert history["contrastive_loss"][-1] < history["contrastive_loss"][0]
    assert "language_modeling_loss" in history
    restored = VishwamCausalLM.from_config(lm.get_config())
    assert restored.multimodal_loss.weighting == "uncertainty"
    # Text-only models keep the loss given to compile().
    assert VishwamCausalLM(tiny_vision_backbone(), use_contrastive_loss=False).multimodal_loss is None


def _turns_preprocessor(sequence_length):
    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=sequence_length)
    preprocessor.image_converter = VishwamImageConverter(image_size=8)
    preprocessor.num_vision_tokens_per_image = 2
    return preprocessor


def _turn_inputs(prompts, responses):
    images = np.random.uniform(0, 255, (len(prompts), 1, 8, 8, 3)).astype("float32")
    return {"prompts": np.array(prompts), "responses": np.array(responses), "images": images}


def test_multi_turn_packing_matches_a_hand_built_sequence():
    preprocessor = _turns_preprocessor(40)
    tokenizer = preprocessor.tokenizer
    prompts = [["<start_of_image> Question: is it a shoe? Answer:", " Question: how many? Answer:"],
               ["<start_of_image> Caption:", ""]]
    responses = [[" yes", " two"], [" a shoe", ""]]
    x, y, w = preprocessor(_turn_inputs(prompts, responses))
    expansion = "<start_of_image><image_soft_token><image_soft_token><end_of_image>"
    for row in range(2):
        ids, predicted = [tokenizer.start_token_id], [False]
        for prompt, response in zip(prompts[row], responses[row]):
            if not prompt and not response:
                continue  # an empty turn is padding
            prompt_ids = np.asarray(tokenizer(prompt.replace("<start_of_image>", expansion))).tolist()
            response_ids = np.asarray(tokenizer(response)).tolist() + [tokenizer.end_token_id]
            ids += prompt_ids + response_ids
            predicted += [False] * len(prompt_ids) + [True] * len(response_ids)
        n = len(ids)
        np.testing.assert_array_equal(_np(x["token_ids"])[row, :n], ids[:n])
        assert (_np(x["token_ids"])[row, n:] == tokenizer.pad_token_id).all()
        np.testing.assert_array_equal(_np(x["padding_mask"])[row], np.arange(40) < n)
        np.testing.assert_array_equal(_np(y)[row, : n - 1], ids[1:])
        np.testing.assert_array_equal(_np(w)[row, : n - 1].astype(bool), predicted[1:])
        assert not _np(w)[row, n - 1 :].any()


def test_one_turn_packs_like_single_turn_and_long_turns_are_cut():
    preprocessor = _turns_preprocessor(24)
    prompts, responses = ["<start_of_image> Caption:", "Hello"], [" a red shoe", " there"]
    inputs = _turn_inputs(prompts, responses)
    single = preprocessor(inputs)
    turns = preprocessor(
        {**inputs, "prompts": inputs["prompts"][:, None], "responses": inputs["responses"][:, None]}
    )
    for a, b in [(single[0]["token_ids"], turns[0]["token_ids"]), (single[1], turns[1]), (single[2], turns[2])]:
        np.testing.assert_array_equal(_np(a), _np(b))
    long = preprocessor(_turn_inputs([["Hello", " Again"]], [[" there " * 14, " more"]]))
    tokenizer = preprocessor.tokenizer
    kept = [tokenizer.start_token_id] + np.asarray(tokenizer("Hello")).tolist()
    kept += np.asarray(tokenizer(" there " * 14)).tolist()
    np.testing.assert_array_equal(_np(long[0]["token_ids"])[0], kept[:24])  # cut from the end
    assert _np(long[0]["padding_mask"]).all()
    assert not (_np(long[1]) == tokenizer.end_token_id).any()  # the cut turn has no <eos>
    for responses in (np.array([" c"]), np.array([[" c", " d", " e"]])):
        with pytest.raises(ValueError, match="responses"):
            preprocessor({"prompts": np.array([["a", "b"]]), "responses": responses,
                          "images": np.zeros((1, 1, 8, 8, 3), "float32")})


def test_fit_on_multi_turn_batches_and_generate_stops_after_one_answer():
    preprocessor = _turns_preprocessor(32)
    # Packing and generation only: four rows with one text leave the SigLIP term nothing to
    # tell apart, and on this tiny model its gradient swamps the answers' in 15 epochs.
    lm = VishwamCausalLM(
        tiny_vision_backbone("interleave"), preprocessor=preprocessor, use_contrastive_loss=False
    )
    inputs = _turn_inputs(
        [["<start_of_image> Question: what? Answer:", " Question: how many? Answer:"]] * 4,
        [[" a shoe", " two"]] * 4,
    )
    lm.compile(optimizer=keras.optimizers.Adam(0.01), sampler="greedy")
    history = lm.fit(inputs, batch_size=4, epochs=15, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] / 2
    out = lm.generate({"prompts": ["<start_of_image> Question: what? Answer:"],
                       "images": [[inputs["images"][0, 0]]]}, max_length=32, strip_prompt=True)
    assert out[0].strip() == "a shoe"  # learnt the first answer, then <eos>
