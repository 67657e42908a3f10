"""VishwamCausalLMPreprocessor: strings -> `token_ids`, `padding_mask` (+ labels for `fit`).

KerasHub's CausalLMPreprocessor with the Vishwam tokenizer, and errors instead of silent
truncation when a prompt does not fit `max_length` in `generate`.
"""

import keras
import numpy as np
from keras_hub.models import CausalLMPreprocessor

from vishwam_keras.models.backbone import VishwamBackbone
from vishwam_keras.models.tokenizer import VishwamTokenizer
from vishwam_keras.models.presets import NamedPresetMixin


@keras.saving.register_keras_serializable(package="vishwam_keras")
class VishwamCausalLMPreprocessor(NamedPresetMixin, CausalLMPreprocessor):
    """Tokenises and packs text for `VishwamCausalLM`.

    For `fit`, `x` strings become `({"token_ids", "padding_mask"}, labels, sample_weight)`
    with labels shifted by one. For `generate`, prompts are packed with a start token
    and no end token, and `generate_postprocess` detokenises the result.

    Args:
        tokenizer: `VishwamTokenizer`.
        sequence_length: int. Packed length. Defaults to `1024`.
        add_start_token: bool. Defaults to `True`.
        add_end_token: bool. Defaults to `True`.

    Example:
    >>> preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=8)
    >>> x, y, w = preprocessor(["To be, or not to be"])
    >>> x["token_ids"].shape
    TensorShape([1, 8])
    """

    backbone_cls = VishwamBackbone
    tokenizer_cls = VishwamTokenizer

    def generate_preprocess(self, x, sequence_length=None):
        sequence_length = sequence_length or self.sequence_length
        if not self.built:
            self.build(None)
        prompts = x if isinstance(x, (list, tuple)) else [x] if isinstance(x, str) else x
        if isinstance(prompts, (list, tuple)):
            if len(prompts) == 0:
                raise ValueError("`inputs` is an empty batch: pass at least one prompt.")
            if any(not isinstance(p, str) for p in prompts):
                raise TypeError(
                    "`inputs` must be strings (or a dict of token tensors without a "
                    f"preprocessor). Received types: {sorted({type(p).__name__ for p in prompts})}"
                )
            lengths = [len(np.asarray(self.tokenizer(p))) + int(self.add_start_token) for p in prompts]
            too_long = [n for n in lengths if n > sequence_length]
            if too_long:
                raise ValueError(
                    f"A prompt of {max(too_long)} tokens is longer than `max_length`="
                    f"{sequence_length}. Pass a larger `max_length` to `generate()` or a "
                    "shorter prompt."
                )
        return super().generate_preprocess(x, sequence_length=sequence_length)
