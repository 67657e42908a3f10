"""VishwamCausalLMPreprocessor: text (+ images) -> `token_ids`, `padding_mask` (+ `images`).

Strings are tokenised and packed as KerasHub's CausalLMPreprocessor does; with an image
converter, each `<start_of_image>` in a prompt expands into its image's token span, images
are converted and padded to a fixed count, and only response tokens carry loss weight.
"""

import keras
import numpy as np
import tensorflow as tf
from keras_hub.layers import MultiSegmentPacker
from keras_hub.models import CausalLMPreprocessor

from vishwam_keras.checks import check_int
from vishwam_keras.models.backbone import VishwamBackbone
from vishwam_keras.models.image_converter import VishwamImageConverter
from vishwam_keras.models.presets import NamedPresetMixin
from vishwam_keras.models.tokenizer import (
    END_OF_IMAGE_TOKEN,
    IMAGE_PLACEHOLDER_TOKEN,
    START_OF_IMAGE_TOKEN,
    VishwamTokenizer,
)


def _as_list(value):
    if isinstance(value, str):
        return [value]
    if isinstance(value, (tf.Tensor, np.ndarray)):
        value = np.asarray(value).reshape(-1).tolist()
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]


@keras.saving.register_keras_serializable(package="vishwam_keras")
class VishwamCausalLMPreprocessor(NamedPresetMixin, CausalLMPreprocessor):
    """Tokenises and packs text (and images) for `VishwamCausalLM`.

    Inputs:
    - strings: plain language-model data; every token is predicted;
    - `{"prompts", "responses"}`: only response tokens carry loss weight;
    - multi-turn: `prompts` and `responses` of shape `(batch, turns)` pack each example
      as `<bos> p0 r0 <eos> p1 r1 <eos> ...` (turns of two empty strings are left out),
      with loss weight on every response and its `<eos>`. `generate` stops at `<eos>`,
      so a model trained this way answers one turn at a time;
    - `{"prompts", "responses"?, "images", "image_mask"?}`: images
      `(batch, num_images, H, W, C)` (or, in `generate`, a list of per-example image
      lists of any length). Each `<start_of_image>` marks where the next image goes.

    For `fit` it returns `(x, y, sample_weight)`: `x` has `token_ids`, `padding_mask`
    (and `images`, `image_mask` when an image converter is set), `y` the next tokens,
    `sample_weight` 1 on predicted tokens (never on prompt, padding or image tokens).

    Args:
        tokenizer: `VishwamTokenizer`.
        image_converter: `None` or `VishwamImageConverter`. Set for multimodal models.
        sequence_length: int. Packed length. Defaults to `1024`.
        add_start_token: bool. Defaults to `True`.
        add_end_token: bool. Defaults to `True`.
        num_vision_tokens_per_image: int. Placeholder tokens per image (the vision
            encoder's `num_output_tokens`). Defaults to `1`.
        max_images_per_prompt: int. Image slots per example in `fit`. Defaults to `1`.

    Example:
    >>> preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=8)
    >>> x, y, w = preprocessor(["To be, or not to be"])
    >>> tuple(x["token_ids"].shape)
    (1, 8)
    """

    backbone_cls = VishwamBackbone
    tokenizer_cls = VishwamTokenizer
    image_converter_cls = VishwamImageConverter

    def __init__(
        self,
        tokenizer,
        image_converter=None,
        sequence_length=1024,
        add_start_token=True,
        add_end_token=True,
        num_vision_tokens_per_image=1,
        max_images_per_prompt=1,
        **kwargs,
    ):
        check_int("sequence_length", sequence_length)
        check_int("num_vision_tokens_per_image", num_vision_tokens_per_image)
        super().__init__(
            tokenizer=tokenizer,
            sequence_length=sequence_length,
            add_start_token=add_start_token,
            add_end_token=add_end_token,
            **kwargs,
        )
        self.image_converter = image_converter
        self.num_vision_tokens_per_image = num_vision_tokens_per_image
        self.max_images_per_prompt = max_images_per_prompt

    def build(self, input_shape):
        super().build(input_shape)
        self.segment_packer = MultiSegmentPacker(
            start_value=self.tokenizer.start_token_id,
            end_value=self.tokenizer.end_token_id,
            pad_value=self.tokenizer.pad_token_id,
            sep_value=[],
            sequence_length=self.sequence_length,
        )
        # The packers have no weights: build them now, so `model.quantize(...)`, which
        # visits every sublayer, does not stop at one that `generate` left unbuilt.
        for packer in (self.packer, self.segment_packer):
            if not packer.built:
                packer.build(None)

    # === Images ===
    @property
    def image_expansion(self):
        return (
            START_OF_IMAGE_TOKEN
            + IMAGE_PLACEHOLDER_TOKEN * self.num_vision_tokens_per_image
            + END_OF_IMAGE_TOKEN
        )

    def _expand_placeholders(self, prompts):
        return tf.strings.regex_replace(prompts, START_OF_IMAGE_TOKEN, self.image_expansion)

    def _empty_images(self, batch_size):
        size = self.image_converter.image_size[0]
        channels = self.image_converter.num_channels
        return (
            tf.zeros((batch_size, 0, size, size, channels), "float32"),
            tf.zeros((batch_size, 0), "int32"),
        )

    def _convert_images(self, images):
        """`(B, M, H, W, C)` -> converted `(B, M, S, S, C')`."""
        images = tf.convert_to_tensor(images)
        shape = tf.shape(images)
        flat = tf.reshape(images, tf.concat([[-1], shape[2:]], axis=0))
        converted = tf.convert_to_tensor(self.image_converter(flat))
        out_shape = tf.shape(converted)
        return tf.reshape(converted, tf.concat([shape[:2], out_shape[1:]], axis=0))

    def _pad_image_lists(self, prompts, images):
        """Per-example image lists -> padded `(B, M, H, W, C)` and `image_mask`, checked."""
        counts = [prompt.count(START_OF_IMAGE_TOKEN) for prompt in prompts]
        if images is None:
            images = [[] for _ in prompts]
        if isinstance(images, np.ndarray) and images.ndim == 5:
            images = [list(example) for example in images]
        if len(images) != len(prompts):
            raise ValueError(
                f"`images` must hold one list of images per prompt: got {len(images)} "
                f"image lists for {len(prompts)} prompts."
            )
        images = [[] if example is None else list(example) if not hasattr(example, "ndim") or example.ndim == 4 else [example] for example in images]
        for row, (count, example) in enumerate(zip(counts, images)):
            if len(example) > count:
                raise ValueError(
                    f"`images` has {len(example)} image(s) for prompt {row}, which has only "
                    f"{count} `{START_OF_IMAGE_TOKEN}` placeholder(s). Add a placeholder per image."
                )
            if len(example) < count:
                raise ValueError(
                    f"Prompt {row} has {count} `{START_OF_IMAGE_TOKEN}` placeholder(s) but "
                    f"`images` gives {len(example)}. Pass one image per placeholder."
                )
        slots = max(counts) if counts else 0
        size = self.image_converter.image_size[0]
        channels = self.image_converter.num_channels
        batch = np.zeros((len(prompts), slots, size, size, channels), "float32")
        mask = np.zeros((len(prompts), slots), "int32")
        for row, example in enumerate(images):
            for slot, image in enumerate(example):
                image = np.asarray(image)
                if image.ndim == 2:
                    image = image[:, :, None]
                if image.ndim != 3:
                    raise ValueError(
                        "Each image must have shape (height, width, channels) or "
                        f"(height, width). Received: images[{row}][{slot}].shape={image.shape}"
                    )
                batch[row, slot] = np.asarray(self.image_converter(image))
                mask[row, slot] = 1
        return batch, mask

    # === Training ===
    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        if not isinstance(x, dict):
            outputs = super().call(x, y, sample_weight, sequence_length=sequence_length)
            if self.image_converter is None:
                return outputs
            inputs, labels, weights = outputs
            batch = tf.shape(inputs["token_ids"])[0]
            inputs["images"], inputs["image_mask"] = self._empty_images(batch)
            return inputs, labels, weights
        sequence_length = sequence_length or self.sequence_length
        prompts = tf.convert_to_tensor(x["prompts"])
        responses = tf.convert_to_tensor(x.get("responses", tf.fill(tf.shape(prompts), "")))
        if self.image_converter is not None:
            prompts = self._expand_placeholders(prompts)
        if prompts.shape.rank == 2:
            token_ids, padding_mask, predicted = self._pack_turns(
                prompts, responses, sequence_length + 1
            )
        else:
            token_ids, segment_ids = self.segment_packer(
                (self.tokenizer(prompts), self.tokenizer(responses)),
                sequence_length=sequence_length + 1,
                add_start_value=self.add_start_token,
                add_end_value=self.add_end_token,
            )
            padding_mask = token_ids != self.tokenizer.pad_token_id
            predicted = tf.logical_and(segment_ids == 1, padding_mask)
        inputs = {"token_ids": token_ids[..., :-1], "padding_mask": padding_mask[..., :-1]}
        if self.image_converter is not None:
            if "images" in x:
                inputs["images"] = self._convert_images(x["images"])
                mask = x.get("image_mask")
                if mask is None:
                    mask = tf.ones(tf.shape(inputs["images"])[:2], "int32")
                inputs["image_mask"] = tf.cast(mask, "int32")
            else:
                inputs["images"], inputs["image_mask"] = self._empty_images(tf.shape(token_ids)[0])
        return keras.utils.pack_x_y_sample_weight(inputs, token_ids[..., 1:], predicted[..., 1:])

    def _tokenize_ragged(self, strings):
        # Called eagerly, KerasHub's tokenizer hands back Python lists; keep tensors.
        ids = self.tokenizer(strings)
        if isinstance(ids, tf.RaggedTensor):
            return ids
        if isinstance(ids, tf.Tensor):  # a tokenizer with its own `sequence_length`
            return tf.RaggedTensor.from_tensor(ids, padding=self.tokenizer.pad_token_id)
        dtype = self.tokenizer.compute_dtype
        return tf.ragged.constant(ids, dtype=dtype, ragged_rank=1, inner_shape=())

    def _pack_turns(self, prompts, responses, length):
        """Multi-turn packing: `(batch, turns)` strings -> `token_ids`, `padding_mask`,
        `predicted`, each `(batch, length)`.

        Example i becomes `<bos> p_i0 r_i0 <eos> p_i1 r_i1 <eos> ...`: each turn is its
        prompt, its response and the end token, and only response and end tokens are
        predicted. A turn whose prompt and response are both `""` is left out (padding
        of examples with fewer turns). What does not fit in `length` is cut from the end,
        so a cut-off last turn loses its `<eos>` (the single-turn packer trims prompt and
        response in turn and keeps it); an example that fits packs exactly as single-turn.
        """
        message = (
            "Multi-turn `prompts` of shape (batch, turns) need `responses` of the same "
            f"shape. Received: prompts {prompts.shape}, responses {responses.shape}"
        )
        if responses.shape.rank != 2 or not prompts.shape.is_compatible_with(responses.shape):
            raise ValueError(message)
        tf.debugging.assert_equal(tf.shape(prompts), tf.shape(responses), message=message)
        turns = tf.shape(prompts)[1]
        keep = tf.logical_or(prompts != "", responses != "")
        prompt_ids = self._tokenize_ragged(tf.reshape(prompts, [-1]))
        response_ids = self._tokenize_ragged(tf.reshape(responses, [-1]))
        num_turns = tf.shape(prompt_ids.row_lengths())[0]
        if self.add_end_token:
            end = tf.fill([num_turns, 1], tf.cast(self.tokenizer.end_token_id, response_ids.dtype))
            response_ids = tf.concat([response_ids, tf.RaggedTensor.from_tensor(end)], axis=1)
        turn_ids = tf.concat([prompt_ids, response_ids], axis=1)
        turn_predicted = tf.concat(
            [tf.zeros_like(prompt_ids, tf.bool), tf.ones_like(response_ids, tf.bool)], axis=1
        )

        def per_example(ragged):
            grouped = tf.RaggedTensor.from_uniform_row_length(
                ragged, tf.cast(turns, ragged.row_splits.dtype)
            )
            return tf.ragged.boolean_mask(grouped, keep).merge_dims(1, 2)

        token_ids, predicted = per_example(turn_ids), per_example(turn_predicted)
        if self.add_start_token:
            batch = tf.shape(prompts)[0]
            start = tf.fill([batch, 1], tf.cast(self.tokenizer.start_token_id, token_ids.dtype))
            token_ids = tf.concat([tf.RaggedTensor.from_tensor(start), token_ids], axis=1)
            predicted = tf.concat([tf.zeros([batch, 1], tf.bool), predicted], axis=1)
        shape = [None, length]
        padding_mask = tf.ones_like(token_ids, tf.bool).to_tensor(False, shape=shape)
        token_ids = token_ids.to_tensor(self.tokenizer.pad_token_id, shape=shape)
        predicted = predicted.to_tensor(False, shape=shape)
        return token_ids, padding_mask, predicted

    # === Generation ===
    def generate_preprocess(self, x, sequence_length=None):
        sequence_length = sequence_length or self.sequence_length
        if not self.built:
            self.build(None)
        images = None
        if isinstance(x, dict):
            if "prompts" not in x:
                raise ValueError(f"`inputs` dict needs a `prompts` key. Received keys: {sorted(x)}")
            images = x.get("images")
            x = x["prompts"]
        prompts = _as_list(x)
        if len(prompts) == 0:
            raise ValueError("`inputs` is an empty batch: pass at least one prompt.")
        if any(not isinstance(p, str) for p in prompts):
            raise TypeError(
                "`prompts` must be strings (or pass a dict of token tensors to a model without "
                f"a preprocessor). Received types: {sorted({type(p).__name__ for p in prompts})}"
            )
        if images is not None and self.image_converter is None:
            raise ValueError("`images` were given but this preprocessor has no image converter.")
        if self.image_converter is not None:
            image_batch, image_mask = self._pad_image_lists(prompts, images)
            prompts = [p.replace(START_OF_IMAGE_TOKEN, self.image_expansion) for p in prompts]
        elif any(START_OF_IMAGE_TOKEN in p for p in prompts):
            raise ValueError(
                f"A prompt contains `{START_OF_IMAGE_TOKEN}` but this model takes no images."
            )
        token_lists = [np.asarray(self.tokenizer(p)) for p in prompts]
        lengths = [len(t) + int(self.add_start_token) for t in token_lists]
        if max(lengths) > sequence_length:
            raise ValueError(
                f"A prompt of {max(lengths)} tokens is longer than `max_length`="
                f"{sequence_length}. Pass a larger `max_length` to `generate()` or a "
                "shorter prompt."
            )
        token_ids = np.full((len(prompts), sequence_length), self.tokenizer.pad_token_id, "int32")
        for row, tokens in enumerate(token_lists):
            if self.add_start_token:
                tokens = np.concatenate([[self.tokenizer.start_token_id], tokens])
            token_ids[row, : len(tokens)] = tokens
        padding_mask = np.arange(sequence_length)[None, :] < np.asarray(lengths)[:, None]
        outputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        if self.image_converter is not None:
            outputs["images"], outputs["image_mask"] = image_batch, image_mask
        return outputs

    def generate_postprocess(self, x):
        x = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
        return super().generate_postprocess(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_vision_tokens_per_image": self.num_vision_tokens_per_image,
                "max_images_per_prompt": self.max_images_per_prompt,
            }
        )
        return config
