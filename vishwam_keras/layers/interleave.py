"""Images into the text stream: encode the images of a batch once, then place their tokens.

`ImageEmbedding` runs the vision encoder (skipped for text-only batches) and returns flat
vision tokens, their mask and a pooled image vector; `ImageTokenInterleave` writes the
tokens over the `<image_soft_token>` placeholders and marks each image's bidirectional span.
"""

import keras
from keras import ops

from vishwam_keras.ops.reductions import masked_mean


class ImageEmbedding(keras.layers.Layer):
    """Images `(batch, num_images, H, W, C)` + `image_mask` -> vision tokens for the decoder.

    Not serialised on its own: the backbone owns (and serialises) the vision encoder and
    rebuilds this wrapper around it.

    Returns:
        `(vision_tokens (B, M * N, d), vision_mask (B, M * N), pooled_image (B, d),
        image_present (B,))`. With `M == 0` (a text-only batch) the encoder does not run
        and one image's worth of masked zero tokens stands in, so downstream shapes stay valid.
    """

    def __init__(self, vision_encoder, **kwargs):
        super().__init__(**kwargs)
        self.vision_encoder = vision_encoder

    def build(self, images_shape, image_mask_shape=None):
        if not self.vision_encoder.built:
            self.vision_encoder.build(images_shape)
        self.built = True

    def call(self, images, image_mask, training=None):
        encoder = self.vision_encoder
        tokens_per_image, width = encoder.num_output_tokens, encoder.output_dim
        batch, num_images = ops.shape(images)[0], images.shape[1]
        if num_images == 0:
            zeros = ops.zeros((batch, tokens_per_image, width), dtype=self.compute_dtype)
            absent = ops.zeros((batch, tokens_per_image), dtype="bool")
            return zeros, absent, zeros[:, 0], ops.zeros((batch,), dtype="bool")
        tokens = encoder(images, training=training)  # (B, M, N, d)
        tokens = ops.reshape(tokens, (batch, -1, width))
        image_mask = ops.cast(image_mask, "bool")
        vision_mask = ops.reshape(
            ops.repeat(image_mask[:, :, None], tokens_per_image, axis=2), (batch, -1)
        )
        pooled = masked_mean(tokens, vision_mask)
        return tokens, vision_mask, pooled, ops.any(image_mask, axis=1)

    def compute_output_shape(self, images_shape, image_mask_shape=None):
        batch, width = images_shape[0], self.vision_encoder.output_dim
        return (batch, None, width), (batch, None), (batch, width), (batch,)


class ImageTokenInterleave(keras.layers.Layer):
    """Replace placeholder embeddings by vision tokens, in order, and mark image spans.

    The k-th placeholder token of a row takes the k-th vision token of that row (images
    in order, `tokens_per_image` each). The span id of a placeholder is its image's
    index + 1 (0 for text), so attention can be bidirectional inside each image.

    Args:
        image_token_id: int. Id of `<image_soft_token>`.
        tokens_per_image: int. Vision tokens per image.
    """

    def __init__(self, image_token_id, tokens_per_image, **kwargs):
        super().__init__(**kwargs)
        self.image_token_id = image_token_id
        self.tokens_per_image = tokens_per_image

    def call(self, embeddings, token_ids, vision_tokens):
        is_image = ops.equal(token_ids, self.image_token_id)
        order = ops.cumsum(ops.cast(is_image, "int32"), axis=1) - 1
        available = ops.shape(vision_tokens)[1]
        index = ops.clip(order, 0, available - 1)
        width = ops.shape(embeddings)[-1]
        gathered = ops.take_along_axis(
            vision_tokens, ops.broadcast_to(index[:, :, None], ops.shape(index) + (width,)), axis=1
        )
        mixed = ops.where(is_image[:, :, None], ops.cast(gathered, embeddings.dtype), embeddings)
        span_ids = ops.where(is_image, order // self.tokens_per_image + 1, 0)
        return mixed, span_ids

    def compute_output_shape(self, embeddings_shape, token_ids_shape=None, vision_tokens_shape=None):
        return embeddings_shape, tuple(embeddings_shape[:2])
