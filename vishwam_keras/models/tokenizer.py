"""VishwamTokenizer: the SentencePiece tokenizer that turns text into token ids and back.

First step of the flow (text -> token_ids) inside the preprocessor; vocabulary in presets/.
"""

import base64
import binascii
import importlib.resources
import os

import keras
from keras_hub.tokenizers import SentencePieceTokenizer

from vishwam_keras.models.presets import NamedPresetMixin

START_TOKEN = "<bos>"
END_TOKEN = "<eos>"
PAD_TOKEN = "<pad>"
START_OF_IMAGE_TOKEN = "<start_of_image>"
END_OF_IMAGE_TOKEN = "<end_of_image>"
IMAGE_PLACEHOLDER_TOKEN = "<image_soft_token>"


# The packaged vocabularies by size, all trained by `scripts/train_tokenizer.py` with
# Gemma's special token ids (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3): 8192 pieces on
# Shakespeare (the default of `MultimodalConfig.vocabulary_size`, and the
# `vishwam_tiny_fashion` preset's), and 2048 on Shakespeare plus every FashionScenes text
# (`--fashion-scenes`; `train_fashion_preset(vocabulary_size=2048)`).
PACKAGED_VOCABULARIES = {8192: "vocabulary.spm", 2048: "fashion_vocabulary.spm"}


def default_vocabulary_path(vocabulary_size=8192):
    """Returns the path of the packaged vocabulary with `vocabulary_size` pieces, as a string.

    Both are byte-fallback BPE SentencePiece models (see `PACKAGED_VOCABULARIES`). The
    2048-piece one writes every FashionScenes word as one piece except "t-shirt"
    (" a sneaker and a bag above a dress and a coat." is 12 tokens, 14 with 8192
    pieces), so FashionScenes examples are short and the embedding table small.

    Args:
        vocabulary_size: int. 8192 (the default) or 2048.

    Raises:
        ValueError: when no packaged vocabulary has `vocabulary_size` pieces.
    """
    if vocabulary_size not in PACKAGED_VOCABULARIES:
        raise ValueError(
            "`vocabulary_size` must be the size of a packaged vocabulary, one of "
            f"{sorted(PACKAGED_VOCABULARIES)}. Received: vocabulary_size={vocabulary_size!r}. "
            "For another size, train one with `python scripts/train_tokenizer.py "
            "--vocab-size N --output DIR` and pass `VishwamTokenizer(proto=path)`."
        )
    resource = importlib.resources.files("vishwam_keras").joinpath(
        "presets", "_tokenizer", PACKAGED_VOCABULARIES[vocabulary_size]
    )
    return str(resource)


@keras.saving.register_keras_serializable(package="vishwam_keras")
class VishwamTokenizer(NamedPresetMixin, SentencePieceTokenizer):
    """Vishwam tokenizer layer based on SentencePiece.

    Tokenizes raw strings into integer sequences and detokenizes them back, on
    top of `keras_hub.tokenizers.SentencePieceTokenizer`. It adds the special
    tokens a Vishwam model needs and checks that the vocabulary has them:
    `<bos>` (`start_token`), `<eos>` (`end_token`) and `<pad>` (`pad_token`),
    and, for vision models, `<start_of_image>` (`start_of_image_token`),
    `<end_of_image>` (`end_of_image_token`) and `<image_soft_token>`
    (`image_placeholder`), which marks where a vision token goes. Each has a
    matching `*_id` attribute (`pad_token_id`, `image_placeholder_id`, ...).

    A batch of strings (rank > 0) gives a ragged batch of ids, or a dense one
    when `sequence_length` is set; a scalar string gives a dense vector.

    Following KerasHub, `proto=None` loads no vocabulary: a preset loader sets
    it later from the preset's `assets/`. To use the packaged vocabulary
    directly, pass `proto=default_vocabulary_path()`.

    Args:
        proto: str, path-like, bytes or `None`. A path to a SentencePiece model
            file, or the serialized model as `bytes`. See the
            [SentencePiece repository](https://github.com/google/sentencepiece).
            Defaults to `None`.
        has_vision_tokens: bool. Whether the vocabulary has the image tokens.
            If `False`, the image token ids are set to -1. Defaults to `True`.
        **kwargs: passed to `SentencePieceTokenizer` (`sequence_length`,
            `add_bos`, `add_eos`, `dtype`, `name`, ...).

    Example:

    ```python
    from vishwam_keras.models.tokenizer import (
        VishwamTokenizer,
        default_vocabulary_path,
    )

    tokenizer = VishwamTokenizer(proto=default_vocabulary_path())

    # Unbatched input: a dense vector of ids.
    token_ids = tokenizer("To be, or not to be: that is the question.")
    tokenizer.detokenize(token_ids)

    # Batched input: a ragged batch, or dense with `sequence_length`.
    tokenizer(["Good night, sweet prince.", "Exeunt."])

    # Special token ids follow Gemma's layout.
    tokenizer.pad_token_id, tokenizer.end_token_id, tokenizer.start_token_id
    # (0, 1, 2)
    ```
    """

    def __init__(self, proto=None, has_vision_tokens=True, **kwargs):
        self.has_vision_tokens = has_vision_tokens
        self._add_special_token(START_TOKEN, "start_token")
        self._add_special_token(END_TOKEN, "end_token")
        self._add_special_token(PAD_TOKEN, "pad_token")
        if has_vision_tokens:
            # Kept on the tokenizer (not the preprocessor) so that the ids are
            # known when the preprocessor runs inside `tf.data`.
            self._add_special_token(START_OF_IMAGE_TOKEN, "start_of_image_token")
            self._add_special_token(END_OF_IMAGE_TOKEN, "end_of_image_token")
            self._add_special_token(IMAGE_PLACEHOLDER_TOKEN, "image_placeholder")
        else:
            self.start_of_image_token_id = -1
            self.end_of_image_token_id = -1
            self.image_placeholder_id = -1
        super().__init__(proto=proto, **kwargs)

    @property
    def image_placeholder_token_id(self):
        """Alias of `image_placeholder_id`, named like the other token ids."""
        return self.image_placeholder_id

    def set_proto(self, proto):
        if isinstance(proto, os.PathLike):
            proto = os.fspath(proto)
        if isinstance(proto, str) and not _is_base64_proto(proto):
            if not os.path.isfile(proto):
                raise ValueError(
                    "`proto` must be the path of a SentencePiece model file or "
                    "its serialized bytes. No file exists at the given path. "
                    f"Received: proto='{proto}'"
                )
        try:
            super().set_proto(proto)
        except (ValueError, ImportError):
            raise
        except Exception as error:
            # SentencePiece and TF Text fail on a bad model with errors that do
            # not say which argument was wrong.
            if isinstance(proto, bytes):
                received = f"<{len(proto)} bytes>"
            else:
                received = repr(proto)
            raise ValueError(
                "`proto` is not a valid SentencePiece model. "
                f"Received: proto={received}"
            ) from error

    def get_config(self):
        config = super().get_config()
        config.update({"has_vision_tokens": self.has_vision_tokens})
        return config


def _is_base64_proto(proto):
    # `SentencePieceTokenizer` also accepts a base64-encoded model as a string
    # (older saved configs); it tells the two apart with the same heuristic.
    if len(proto) <= 2048:
        return False
    try:
        base64.b64decode(proto, validate=True)
    except binascii.Error:
        return False
    return True
