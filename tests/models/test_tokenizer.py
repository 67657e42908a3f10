import keras
import numpy as np
import pytest
import tensorflow as tf

from vishwam_keras import VishwamTokenizer
from vishwam_keras.models.tokenizer import default_vocabulary_path

ASCII_TEXT = "To be, or not to be: that is the question.\n  Exeunt.\t[1601]  "
UNICODE_TEXT = "Ay, 😀 hark! 日本語の文 and café — naïve ü 🧑‍🚀"


@pytest.fixture(scope="module")
def tokenizer():
    return VishwamTokenizer(proto=default_vocabulary_path())


def test_packaged_vocabulary(tokenizer):
    assert tokenizer.vocabulary_size() == 8192
    assert tokenizer.get_vocabulary()[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"]


def test_ascii_round_trip_is_exact_and_uses_no_byte_fallback(tokenizer):
    token_ids = tokenizer(ASCII_TEXT)
    assert token_ids.ndim == 1
    assert tokenizer.detokenize(token_ids) == ASCII_TEXT
    pieces = [tokenizer.id_to_token(int(i)) for i in token_ids]
    assert not any(piece.startswith("<0x") for piece in pieces)
    # `split_digits`: every digit is its own piece.
    assert {"1", "6", "0"} <= set(pieces)


def test_unicode_round_trip_through_byte_fallback(tokenizer):
    token_ids = tokenizer(UNICODE_TEXT)
    assert tokenizer.detokenize(token_ids) == UNICODE_TEXT
    pieces = [tokenizer.id_to_token(int(i)) for i in token_ids]
    assert "<0xF0>" in pieces  # the first byte of the emoji
    assert "<unk>" not in pieces


def test_special_token_ids(tokenizer):
    assert tokenizer.pad_token_id == 0
    assert tokenizer.end_token_id == 1
    assert tokenizer.start_token_id == 2
    assert tokenizer.token_to_id("<unk>") == 3
    assert (tokenizer.pad_token, tokenizer.end_token, tokenizer.start_token) == (
        "<pad>",
        "<eos>",
        "<bos>",
    )
    with_bos_eos = VishwamTokenizer(
        proto=default_vocabulary_path(), add_bos=True, add_eos=True
    )
    token_ids = with_bos_eos("Exeunt.")
    assert token_ids[0] == 2 and token_ids[-1] == 1


def test_image_and_turn_tokens_are_single_ids(tokenizer):
    image_ids = [
        tokenizer.start_of_image_token_id,
        tokenizer.image_placeholder_id,
        tokenizer.end_of_image_token_id,
    ]
    assert len(set(image_ids)) == 3
    assert tokenizer.image_placeholder_token_id == tokenizer.image_placeholder_id
    text = "Look:<start_of_image><image_soft_token><end_of_image> there"
    token_ids = tokenizer(text)
    start = list(token_ids).index(image_ids[0])
    assert list(token_ids[start : start + 3]) == image_ids
    assert tokenizer.detokenize(token_ids) == text
    for turn_token in ["<start_of_turn>", "<end_of_turn>"]:
        assert len(tokenizer(turn_token)) == 1


def test_without_vision_tokens():
    tokenizer = VishwamTokenizer(
        proto=default_vocabulary_path(), has_vision_tokens=False
    )
    assert tokenizer.image_placeholder_id == -1
    assert tokenizer.start_of_image_token_id == -1
    assert tokenizer.get_config()["has_vision_tokens"] is False


def test_batch_is_ragged_or_dense_like_keras_hub(tokenizer):
    texts = ["Good night, sweet prince.", "Exeunt.", UNICODE_TEXT]
    ragged = tokenizer(texts)
    lengths = [len(ids) for ids in ragged]
    assert len(set(lengths)) == 3
    assert tokenizer.detokenize(ragged) == texts

    dense = VishwamTokenizer(proto=default_vocabulary_path(), sequence_length=12)
    dense_ids = keras.ops.convert_to_numpy(dense(texts))
    assert dense_ids.shape == (3, 12)
    assert np.all(dense_ids[1, lengths[1] :] == 0)  # padded with `<pad>`

    # Inside tf.data the same ids come back as a `tf.RaggedTensor`. A fresh
    # tokenizer: TF Text names its kernel-owned resource by a counter that
    # `keras.utils.set_random_seed` (conftest, each test) resets, so the newest
    # tokenizer takes the name and older ones lose their tf.data path.
    tf_tokenizer = VishwamTokenizer(proto=default_vocabulary_path())
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(3).map(tf_tokenizer)
    ragged_tf = dataset.get_single_element()
    assert isinstance(ragged_tf, tf.RaggedTensor)
    assert ragged_tf.to_list() == [list(ids) for ids in ragged]
    assert tf_tokenizer.detokenize(ragged_tf) == texts


def test_proto_as_bytes_matches_path(tokenizer):
    with open(default_vocabulary_path(), "rb") as file:
        from_bytes = VishwamTokenizer(proto=file.read())
    assert list(from_bytes(ASCII_TEXT)) == list(tokenizer(ASCII_TEXT))


def test_get_config_round_trip(tokenizer):
    config = tokenizer.get_config()
    assert config["proto"] is None  # the vocabulary is saved as an asset
    restored = VishwamTokenizer.from_config(config)
    assert restored.proto is None and restored.pad_token_id is None
    restored.set_proto(default_vocabulary_path())
    assert restored.get_config() == config
    assert list(restored(ASCII_TEXT)) == list(tokenizer(ASCII_TEXT))

    serialized = keras.saving.serialize_keras_object(tokenizer)
    assert serialized["registered_name"] == "vishwam_keras>VishwamTokenizer"
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(deserialized, VishwamTokenizer)


def test_no_proto_loads_nothing():
    tokenizer = VishwamTokenizer()
    assert tokenizer.proto is None
    with pytest.raises(ValueError, match="No vocabulary"):
        tokenizer("text")


def test_bad_proto_raises_value_error_naming_the_argument(tmp_path):
    missing = str(tmp_path / "missing.spm")
    with pytest.raises(ValueError, match=r"`proto`.*No file exists.*missing\.spm"):
        VishwamTokenizer(proto=missing)
    not_a_model = tmp_path / "not_a_model.spm"
    not_a_model.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="`proto` is not a valid SentencePiece"):
        VishwamTokenizer(proto=not_a_model)


# === The FashionScenes vocabulary (2048 pieces) ===
@pytest.fixture(scope="module")
def fashion_tokenizer():
    return VishwamTokenizer(proto=default_vocabulary_path(2048))


def test_fashion_vocabulary_has_gemma_layout_and_round_trips(fashion_tokenizer, tokenizer):
    assert fashion_tokenizer.vocabulary_size() == 2048
    assert fashion_tokenizer.get_vocabulary()[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert fashion_tokenizer.image_placeholder_id == tokenizer.image_placeholder_id
    for text in (ASCII_TEXT, UNICODE_TEXT):
        assert fashion_tokenizer.detokenize(fashion_tokenizer(text)) == text


def test_fashion_vocabulary_writes_scene_words_as_single_pieces(fashion_tokenizer, tokenizer):
    from vishwam_keras.data import fashion_scenes

    words = set()
    for text in fashion_scenes.QUESTIONS + fashion_scenes.ANSWERS + fashion_scenes.QUESTION_FOCUS:
        words |= set(text.replace("?", "").split())
    split = {word for word in words if len(fashion_tokenizer(" " + word)) != 1}
    assert split == {"t-shirt"}
    caption = " " + fashion_scenes.caption([7, 8, 3, 4])
    assert caption == " a sneaker and a bag above a dress and a coat"
    assert len(fashion_tokenizer(caption)) == 11
    # The Shakespeare vocabulary needs more pieces for the same caption.
    assert len(tokenizer(caption)) > 11


def test_default_vocabulary_path_rejects_an_unpackaged_size():
    with pytest.raises(ValueError, match=r"`vocabulary_size`.*\[2048, 8192\].*vocabulary_size=1000.*train_tokenizer"):
        default_vocabulary_path(1000)


def test_create_preprocessor_uses_the_config_vocabulary():
    from vishwam_keras import MultimodalConfig
    from vishwam_keras.config import FASHION_TINY_CONFIG, FASHION_VOCABULARY_SIZE
    from vishwam_keras.models.factory import create_preprocessor
    from vishwam_keras.training.pipeline import fashion_model_config

    assert fashion_model_config() is FASHION_TINY_CONFIG
    config = fashion_model_config(FASHION_VOCABULARY_SIZE)
    assert config.vocabulary_size == 2048 and config.embed_dim == FASHION_TINY_CONFIG.embed_dim
    assert create_preprocessor(config, 16).tokenizer.vocabulary_size() == 2048
    assert create_preprocessor(FASHION_TINY_CONFIG, 16).tokenizer.vocabulary_size() == 8192
    with pytest.raises(ValueError, match="vocabulary_size=100"):
        create_preprocessor(MultimodalConfig(vocabulary_size=100), 16)
    with pytest.raises(ValueError, match=r"`vocabulary_size`.*vocabulary_size=4096"):
        fashion_model_config(4096)
