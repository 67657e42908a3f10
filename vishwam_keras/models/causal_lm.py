"""VishwamCausalLM: next-token prediction on `VishwamBackbone`, with a cached `generate`.

`fit` trains on (token_ids, padding_mask) -> next tokens; `generate` prefills a bucketed
prompt prefix once, then decodes one token per step with per-layer (ring-buffer) caches.
"""

import keras
import keras_hub
import numpy as np
from keras import ops
from keras_hub.models import CausalLM

from vishwam_keras.checks import check_float
from vishwam_keras.layers import kv_cache
from vishwam_keras.models.backbone import VishwamBackbone
from vishwam_keras.models.preprocessor import VishwamCausalLMPreprocessor
from vishwam_keras.models.presets import NamedPresetMixin
from vishwam_keras.training.losses import (
    CONTRASTIVE,
    CONTRASTIVE_POOLINGS,
    LANGUAGE_MODELING,
    ContrastiveAlignment,
    MultimodalLoss,
    language_model_loss,
)


IMAGE_MARKER_TOKEN_IDS = (4, 5)  # <start_of_image>, <end_of_image> in the bundled vocabulary


def bucket_down(length):
    """Largest bucket <= `length` (powers of two below 64, then multiples of 64); 0 if none.

    The prefix up to the bucket is encoded in one parallel pass; the rest of each prompt
    is fed through decode steps. Buckets keep the number of compiled variants small.
    """
    length = int(length)
    if length <= 0:
        return 0
    if length < 64:
        return 1 << (length.bit_length() - 1)
    return (length // 64) * 64


def prefill_bucket(min_prompt_length):
    """Largest bucket <= `min_prompt_length - 1` (leaves the last prompt token to decode)."""
    return bucket_down(int(min_prompt_length) - 1)


def bucket_up(length, limit):
    """Smallest bucket >= `length` (powers of two below 64, then multiples of 64), <= `limit`."""
    length = int(length)
    if length <= 1:
        bucket = 1
    elif length <= 64:
        bucket = 1 << (length - 1).bit_length()
    else:
        bucket = -(-length // 64) * 64
    return min(bucket, int(limit))


def _is_dataset(value):
    return type(value).__module__.startswith("tensorflow") and hasattr(value, "element_spec")


def _any_equal(tensor, values, mask):
    """True where `tensor` equals any of `values` and `mask` is True."""
    found = ops.zeros_like(tensor, dtype="bool")
    for value in values:
        found = ops.logical_or(found, ops.equal(tensor, value))
    return ops.logical_and(found, mask)


@keras.saving.register_keras_serializable(package="vishwam_keras")
class VishwamCausalLM(NamedPresetMixin, CausalLM):
    """A causal language model on `VishwamBackbone`, KerasHub style.

    Calling the model maps `{"token_ids", "padding_mask"}` to logits
    `(batch, length, vocabulary_size)` through the tied embedding (and final soft cap).
    `generate()` accepts strings (with a preprocessor) or token dicts, prompts of
    different lengths in one batch, any KerasHub sampler (`compile(sampler=...)`),
    stop tokens and `max_length`.

    Args:
        backbone: `VishwamBackbone`.
        preprocessor: `None` or `VishwamCausalLMPreprocessor`.
        use_contrastive_loss: bool. For a backbone with vision, add the sigmoid contrastive
            (SigLIP) loss between pooled images and texts in training. Defaults to `True`.
        loss_weighting: `"uncertainty"` or `"fixed"` (see `MultimodalLoss`).
        contrastive_initial_bias: float. The SigLIP bias's starting value. SigLIP's `-10`
            (the default) is about `-log(batch_size - 1)` at its batch of 32k, the log odds
            of a matching pair; small batches learn faster starting from their own value
            (`-2.7` at batch 16).
        contrastive_pooling: `"tokens"` or `"mean"`, the contrastive towers' head (see
            `ContrastiveAlignment`). `"tokens"` (the default) flattens each image's vision
            tokens in order, so the image embedding knows where each thing is; `"mean"`
            averages them (a bag of contents; models saved before this option load with it).

    Example:
    >>> backbone = VishwamBackbone(vocabulary_size=100, num_layers=2, num_query_heads=4,
    ...     num_key_value_heads=2, hidden_dim=32, intermediate_dim=64, head_dim=8,
    ...     sliding_window_size=4)
    >>> lm = VishwamCausalLM(backbone)
    >>> prompt = {"token_ids": np.array([[2, 5, 6, 0, 0, 0]]),
    ...           "padding_mask": np.array([[1, 1, 1, 0, 0, 0]])}
    >>> lm.generate(prompt, stop_token_ids=None)["token_ids"].shape
    (1, 6)
    """

    backbone_cls = VishwamBackbone
    preprocessor_cls = VishwamCausalLMPreprocessor

    def __init__(
        self,
        backbone,
        preprocessor=None,
        use_contrastive_loss=True,
        loss_weighting="uncertainty",
        contrastive_initial_bias=-10.0,
        contrastive_pooling="tokens",
        **kwargs,
    ):
        contrastive_initial_bias = check_float(
            "contrastive_initial_bias", contrastive_initial_bias, minimum=None
        )
        if contrastive_pooling not in CONTRASTIVE_POOLINGS:
            raise ValueError(
                f"`contrastive_pooling` must be one of {CONTRASTIVE_POOLINGS}. "
                f"Received: contrastive_pooling={contrastive_pooling!r}"
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        multimodal = backbone.has_vision and use_contrastive_loss
        self.contrastive_alignment = None
        self.multimodal_loss = None
        if multimodal:
            image_token_ids = [backbone.image_token_id, *IMAGE_MARKER_TOKEN_IDS]
            self.contrastive_alignment = ContrastiveAlignment(
                backbone.hidden_dim, image_token_ids, text_encoder=self._encode_text_only,
                initial_bias=contrastive_initial_bias, pooling=contrastive_pooling,
                tokens_per_image=backbone.vision_encoder.num_output_tokens,
                name="contrastive_alignment",
            )
            self.multimodal_loss = MultimodalLoss(weighting=loss_weighting, name="multimodal_loss")
            self.multimodal_loss.build()

        # === Functional model ===
        inputs = backbone.input
        outputs = backbone(inputs)
        hidden_states = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        logits = backbone.token_embedding(hidden_states, reverse=True)
        # Logits in float32 even under mixed precision: the loss needs the range.
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
        if multimodal:
            logits = self.contrastive_alignment(
                logits, outputs["vision_tokens"], outputs["vision_mask"],
                outputs["image_embedding"], outputs["image_present"],
                inputs["token_ids"], inputs["padding_mask"],
            )
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.use_contrastive_loss = use_contrastive_loss
        self.loss_weighting = loss_weighting
        self.contrastive_initial_bias = contrastive_initial_bias
        self.contrastive_pooling = contrastive_pooling
        self._generate_functions = {}

    def _encode_text_only(self, token_ids, padding_mask):
        return self.backbone.decode(
            {"token_ids": token_ids, "padding_mask": padding_mask}, text_only=True
        )

    def embed_images(self, images, image_mask=None):
        """Contrastive image embeddings `(batch, hidden_dim)` (one pooled vector per row)."""
        inputs = self.backbone.complete_inputs(
            {"token_ids": ops.zeros((ops.shape(images)[0], 1), "int32"), "images": images,
             "image_mask": image_mask}
        )
        vision = self.backbone.encode_images(inputs["images"], inputs["image_mask"])
        return self.contrastive_alignment.embed_image(vision[0], vision[1], vision[2])

    def embed_texts(self, token_ids, padding_mask):
        """Contrastive text embeddings `(batch, hidden_dim)` from a text-only pass."""
        return self.contrastive_alignment.embed_text(
            ops.convert_to_tensor(token_ids, "int32"), ops.convert_to_tensor(padding_mask)
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Language-model loss; with images also the SigLIP loss, weighted by `MultimodalLoss`.

        Text-only models use the loss given to `compile`. Multimodal models use the masked
        token cross-entropy and, for batches with images, the contrastive term added by
        `ContrastiveAlignment`; `fit` logs `language_modeling_loss` and `contrastive_loss`.
        """
        if self.multimodal_loss is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        lm_loss = language_model_loss(y, y_pred, sample_weight)
        extra = self.losses
        if not extra:  # a text-only batch; a stage's factor on the LM term still applies
            parts = self.multimodal_loss({LANGUAGE_MODELING: lm_loss})
            self.multimodal_loss.update_metrics(parts)
            return parts["loss"]
        contrastive = ops.cast(ops.sum(ops.stack([ops.cast(l, "float32") for l in extra])), "float32")
        parts = self.multimodal_loss({LANGUAGE_MODELING: lm_loss, CONTRASTIVE: contrastive})
        self.multimodal_loss.update_metrics(parts)
        return parts["loss"]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "use_contrastive_loss": self.use_contrastive_loss,
                "loss_weighting": self.loss_weighting,
                "contrastive_initial_bias": self.contrastive_initial_bias,
                "contrastive_pooling": self.contrastive_pooling,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # A config saved before `contrastive_pooling` existed has the mean-pooled head.
        config = dict(config)
        config.setdefault("contrastive_pooling", "mean")
        return super().from_config(config)

    def __call__(self, inputs=None, *args, input_ids=None, images=None, **kwargs):
        """Also callable as `model(input_ids=..., images=...)` (the seed design's form)."""
        if inputs is None:
            if input_ids is None:
                raise ValueError("Pass `inputs` (a dict) or `input_ids=` to the model.")
            inputs = {"token_ids": input_ids}
            if images is not None:
                inputs["images"] = images
        inputs = self.backbone.complete_inputs(inputs)
        self.backbone.check_inputs(inputs)
        return super().__call__(inputs, *args, **kwargs)

    # === Cached forward pass ===
    def call_with_cache(
        self,
        token_ids,
        cache,
        cache_update_index,
        padding_mask=None,
        vision=None,
        cache_update_mask=None,
        logits_kernel=None,
    ):
        """Forward pass that reads and updates the per-layer key/value caches.

        Args:
            token_ids: int tensor `(batch, length)`. With `length > 1` this is a prefill
                from position 0; with `length == 1` a decode step.
            cache: tuple with one `(key, value)` pair per decoder block.
            cache_update_index: int or scalar tensor: position of `token_ids[:, 0]`.
            padding_mask: optional `(batch, length)` mask for a prefill.
            vision: optional output of `backbone.encode_images` (encoded once per batch).
            cache_update_mask: optional bool `(batch,)` for a decode step; False keeps
                the prefill's keys of a prompt token.
            logits_kernel: optional `(hidden_dim, vocabulary_size)` from `_logits_kernel()`,
                made once before a decode loop.

        Returns:
            `(logits, hidden_states, cache)`.
        """
        backbone = self.backbone
        x = backbone.embed_tokens(token_ids)
        span_ids = None
        prefill = token_ids.shape[1] != 1
        if vision is not None and prefill and backbone.fusion_type != "cross_attention":
            x, span_ids = backbone.interleave(x, token_ids, vision[0])
        new_cache = []
        for i, (block, layer_cache) in enumerate(zip(backbone.transformer_layers, cache)):
            x, layer_cache = block(
                x,
                padding_mask=padding_mask,
                span_ids=span_ids,
                cache=layer_cache,
                cache_update_index=cache_update_index,
                cache_update_mask=None if prefill else cache_update_mask,
            )
            new_cache.append(layer_cache)
            if vision is not None and i in backbone.cross_attention_blocks:
                x = backbone.cross_attention_blocks[i](
                    x, vision[0], vision_mask=vision[1], pooled_image=vision[2],
                    image_present=vision[3],
                )
        hidden_states = backbone.final_norm(x)
        if logits_kernel is None:
            logits = backbone.token_embedding(hidden_states, reverse=True)
        else:
            logits = ops.matmul(hidden_states, logits_kernel)
            cap = backbone.token_embedding.logit_soft_cap
            if cap is not None:
                logits = ops.tanh(logits / cap) * cap
        return ops.cast(logits, "float32"), hidden_states, tuple(new_cache)

    def _logits_kernel(self):
        """The tied embedding transposed to `(hidden_dim, vocabulary_size)`, or None.

        `ReversibleEmbedding` multiplies by `embeddings^T` at every call; on XLA CPU that
        transposed operand is about 1.5x slower than a contiguous one at batch > 1, so the
        decode loop transposes once, before the loop. Quantized embeddings keep their path.
        """
        embedding = self.backbone.token_embedding
        if (
            getattr(embedding, "quantization_mode", None) is not None
            or not embedding.tie_weights
            or getattr(embedding, "reverse_dtype", None) is not None
        ):
            return None
        kernel = ops.cast(embedding.embeddings, embedding.compute_dtype)
        return ops.transpose(kernel)

    def _build_cache(self, token_ids, prefill_length, ring_extra=0, padding_mask=None, vision=None):
        """Empty caches, then prefill `prefill_length` tokens.

        Local layers get ring buffers of `sliding_window_size + ring_extra` slots (the
        extra covers prefilled positions beyond the shortest prompt), global layers the
        full length.
        """
        batch_size, max_length = ops.shape(token_ids)[0], token_ids.shape[1]
        cache = []
        for block in self.backbone.transformer_layers:
            window = block.attention.sliding_window_size
            size = kv_cache.cache_length(None if window is None else window + ring_extra, max_length)
            cache.append(
                kv_cache.empty_cache(
                    batch_size, size, self.backbone.num_key_value_heads,
                    self.backbone.head_dim, self.compute_dtype,
                )
            )
        cache = tuple(cache)
        if prefill_length > 0:
            _, _, cache = self.call_with_cache(
                token_ids[:, :prefill_length], cache, 0,
                padding_mask=None if padding_mask is None else padding_mask[:, :prefill_length],
                vision=vision,
            )
        return cache

    def cache_bytes(self, batch_size, max_length):
        """Bytes of key/value cache `generate` allocates for this batch and length."""
        itemsize = np.dtype(self.compute_dtype).itemsize if self.compute_dtype != "bfloat16" else 2
        per_slot = 2 * batch_size * self.backbone.num_key_value_heads * self.backbone.head_dim
        slots = sum(
            kv_cache.cache_length(block.attention.sliding_window_size, max_length)
            for block in self.backbone.transformer_layers
        )
        return slots * per_slot * itemsize

    # === Generation ===
    def generate_step(self, inputs, stop_token_ids=None):
        """One compilable generation pass over a batch (XLA on JAX and TensorFlow).

        Prefills the first `self._prefill_length` positions in one pass (a static bucket
        chosen by `make_generate_function`), then samples one token per step from
        `self._start_index`, keeping prompt tokens where `padding_mask` is True. Images
        are encoded once, before the loop.
        """
        token_ids = ops.convert_to_tensor(inputs["token_ids"], "int32")
        padding_mask = ops.cast(inputs["padding_mask"], "bool")
        prefill_length, start_index = self._prefill_length, self._start_index
        batch_size = ops.shape(token_ids)[0]
        vision = None
        if self.backbone.has_vision and inputs.get("images") is not None:
            if inputs["images"].shape[1]:
                vision = self.backbone.encode_images(inputs["images"], inputs["image_mask"])
        cache = self._build_cache(
            token_ids, prefill_length, self._ring_extra, padding_mask=padding_mask, vision=vision
        )
        logits_kernel = self._logits_kernel()

        def next(prompt, cache, index):
            position = index - 1
            current = ops.slice(prompt, [0, position], [batch_size, 1])
            # A prompt token already prefilled keeps its (possibly bidirectional) keys.
            prompt_token = ops.squeeze(ops.slice(padding_mask, [0, position], [batch_size, 1]), 1)
            update = ops.logical_or(
                ops.logical_not(prompt_token), ops.greater_equal(position, prefill_length)
            )
            logits, hidden_states, cache = self.call_with_cache(
                current, cache, position, vision=vision, cache_update_mask=update,
                logits_kernel=logits_kernel,
            )
            return ops.squeeze(logits, axis=1), ops.squeeze(hidden_states, axis=1), cache

        token_ids = self.sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=start_index,
            mask=padding_mask,
            stop_token_ids=stop_token_ids,
            model=self,
        )
        if stop_token_ids is not None:
            # Keep everything up to and including the first new stop token.
            end_locations = ops.cast(
                _any_equal(token_ids, stop_token_ids, ops.logical_not(padding_mask)), "int32"
            )
            after_end = ops.cumsum(end_locations, axis=-1) - end_locations
            padding_mask = ops.logical_not(ops.cast(after_end, "bool"))
        else:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def _plan_generation(self, token_ids, padding_mask, has_images):
        """Static prefill length, first sampled index and ring-buffer slack for a batch.

        Text-only: prefill the largest bucket within the shortest prompt (`bucket_down`),
        so ring buffers stay at the window size. With images: prefill past the last image
        token of every row, so each image is encoded with bidirectional attention in one
        pass; local caches then grow by how far the prefill passes the shortest prompt.
        """
        lengths = padding_mask.astype(bool).sum(axis=-1)
        min_length, max_length = int(lengths.min()), token_ids.shape[1]
        # The prefill may cover the whole shortest prompt: the first decode step feeds its
        # last token again (keeping the prefilled keys) to get the first logits. Stopping
        # one token earlier would cost a whole bucket (64 decode steps) at lengths k * 64.
        prefill_length = bucket_down(min_length)
        if has_images:
            is_image = token_ids == self.backbone.image_token_id
            last = max((int(np.nonzero(row)[0].max()) + 1 if row.any() else 0) for row in is_image)
            prefill_length = max(prefill_length, bucket_up(last, max_length) if last else 0)
        start_index = min(prefill_length, min_length - 1) + 1
        # The first decode step (position min_length - 1) needs the window before it, and
        # the prefill has already written up to prefill_length - 1 into the ring.
        ring_extra = max(0, prefill_length - min_length)
        return prefill_length, start_index, ring_extra

    def make_generate_function(self):
        """KerasHub's compiled generate function, one per (prefill, start, ring) plan."""
        base_make = super().make_generate_function
        if self.generate_function is None:  # reset by compile() or quantize()
            self._generate_functions = {}

        def generate_function(inputs, stop_token_ids=None):
            padding_mask = np.asarray(ops.convert_to_numpy(inputs["padding_mask"]))
            token_ids = np.asarray(ops.convert_to_numpy(inputs["token_ids"]))
            self.backbone.check_inputs({"token_ids": token_ids, "padding_mask": padding_mask})
            prompt_lengths = padding_mask.astype(bool).sum(axis=-1)
            if prompt_lengths.min() == 0:
                raise ValueError(
                    "Every prompt needs at least one token: received an empty prompt "
                    f"(prompt lengths {prompt_lengths.tolist()}). Pass non-empty `inputs`."
                )
            images = inputs.get("images") if isinstance(inputs, dict) else None
            has_images = self.backbone.has_vision and images is not None and images.shape[1] > 0
            plan = self._plan_generation(token_ids, padding_mask, has_images)
            self._prefill_length, self._start_index, self._ring_extra = plan  # read while tracing
            function = self._generate_functions.get(plan)
            if function is None:
                self.generate_function = None
                function = base_make()
                self._generate_functions[plan] = function
                self.generate_function = generate_function
            return function(inputs, stop_token_ids=stop_token_ids)

        self.generate_function = generate_function
        return generate_function

    def compile(self, *args, sampler="top_k", **kwargs):
        """KerasHub's `CausalLM.compile`, refusing a `sampler` that is not one.

        Args:
            *args, **kwargs: as `keras_hub.models.CausalLM.compile` (`optimizer`, `loss`,
                `weighted_metrics`, ...).
            sampler: a `keras_hub.samplers.Sampler` or its name (`"greedy"`, `"top_k"`,
                `"top_p"`, `"beam"`, `"random"`, `"contrastive"`). Defaults to `"top_k"`.
        """
        resolved = keras_hub.samplers.get(sampler)
        if not isinstance(resolved, keras_hub.samplers.Sampler):
            raise ValueError(
                "`sampler` must be a `keras_hub.samplers.Sampler` or the name of one "
                "('greedy', 'top_k', 'top_p', 'beam', 'random', 'contrastive'). "
                f"Received: sampler={sampler!r}"
            )
        super().compile(*args, sampler=resolved, **kwargs)

    def generate(self, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False):
        if self.preprocessor is None and not isinstance(inputs, dict) and not _is_dataset(inputs):
            raise TypeError(
                "Without a preprocessor, `inputs` must be a dict of token ids "
                '(`{"token_ids": ..., "padding_mask": ...}`) or a `tf.data.Dataset` of them. '
                f"Received: inputs of type {type(inputs).__name__}. Attach a preprocessor "
                "(`VishwamCausalLM.from_preset(...)` does) to generate from strings."
            )
        if isinstance(stop_token_ids, (list, tuple)):
            vocabulary_size = self.backbone.vocabulary_size
            bad = [
                t for t in stop_token_ids
                if isinstance(t, bool) or not isinstance(t, (int, np.integer))
                or not 0 <= t < vocabulary_size
            ]
            if bad:
                raise ValueError(
                    f"`stop_token_ids` must be token ids in [0, {vocabulary_size}). "
                    f"Received: stop_token_ids={list(stop_token_ids)!r}"
                )
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 2
        ):
            raise ValueError(
                f"`max_length` must be an int >= 2. Received: max_length={max_length!r}"
            )
        return super().generate(
            inputs, max_length=max_length, stop_token_ids=stop_token_ids, strip_prompt=strip_prompt
        )
