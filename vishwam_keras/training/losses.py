"""Training losses: masked language-model cross-entropy, SigLIP sigmoid contrastive loss, weighting.

`fit` sits here in the data flow: logits + targets + pooled embeddings -> one scalar per step.
"""

import math

import keras
from keras import ops

from vishwam_keras.checks import check_float, check_int
from vishwam_keras.ops.reductions import masked_mean

LANGUAGE_MODELING = "language_modeling"
CONTRASTIVE = "contrastive"
WEIGHTINGS = ("uncertainty", "fixed")

# Attribute names `compute_multimodal_loss` looks up on a model.
CONTRASTIVE_HEAD_ATTRIBUTE = "contrastive_head"
MULTIMODAL_LOSS_ATTRIBUTE = "multimodal_loss"


def _static_rank(value):
    shape = getattr(value, "shape", None)
    return None if shape is None else len(shape)


def _check_rank(name, value, rank):
    actual = _static_rank(value)
    if actual is not None and actual != rank:
        raise ValueError(
            f"`{name}` must have rank {rank}. Received: {name}.shape={tuple(value.shape)}"
        )


def _check_same_dims(names, values, axes):
    """Raise if the statically known sizes of `axes` differ between the two tensors."""
    shapes = [tuple(value.shape) for value in values]
    for axis in axes:
        sizes = [shape[axis] for shape in shapes]
        if None not in sizes and sizes[0] != sizes[1]:
            raise ValueError(
                f"`{names[0]}` and `{names[1]}` must agree on axis {axis}. Received: "
                f"{names[0]}.shape={shapes[0]}, {names[1]}.shape={shapes[1]}"
            )


# === Language modelling ===
def token_cross_entropy(y_true, y_pred):
    """Per-token cross-entropy from logits, in float32: `(batch, length)`."""
    _check_rank("y_pred", y_pred, 3)
    _check_rank("y_true", y_true, 2)
    _check_same_dims(("y_true", "y_pred"), (y_true, y_pred), (0, 1))
    logits = ops.cast(y_pred, "float32")
    labels = ops.cast(y_true, "int32")
    return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def language_model_loss(y_true, y_pred, sample_weight=None):
    """Mean next-token cross-entropy over the tokens the loss mask keeps.

    `loss = sum(w * ce) / sum(w)`: prompt, padding and image-placeholder tokens carry
    weight 0 in `sample_weight` (the preprocessor's loss mask) and are left out. An all-zero
    mask gives 0 instead of NaN.

    Args:
        y_true: int tensor `(batch, length)`. Target token ids.
        y_pred: float tensor `(batch, length, vocabulary_size)`. Logits (any float dtype;
            the loss is computed in float32).
        sample_weight: `None` or tensor `(batch, length)`. Loss mask or per-token weights.
            Defaults to `None` (every token counts).

    Returns:
        A float32 scalar.
    """
    per_token = token_cross_entropy(y_true, y_pred)
    if sample_weight is None:
        return ops.mean(per_token)
    _check_same_dims(("sample_weight", "y_true"), (sample_weight, y_true), (0, 1))
    weights = ops.cast(sample_weight, "float32")
    return ops.divide_no_nan(ops.sum(per_token * weights), ops.sum(weights))


@keras.saving.register_keras_serializable(package="vishwam_keras")
class LanguageModelLoss(keras.losses.Loss):
    """Token cross-entropy from logits, averaged over the unmasked (response) tokens.

    A `keras.losses.Loss` for `model.compile(loss=...)`: the per-token cross-entropy is
    computed in float32 and reduced with `"mean_with_sample_weight"`, so the `sample_weight`
    that `fit` receives from the preprocessor (the loss mask: 0 on prompt, padding and
    image tokens) divides by the number of kept tokens, not by `batch * length`. It equals
    `language_model_loss(y_true, y_pred, sample_weight)`.

    Args:
        reduction: str. Keras reduction. Defaults to `"mean_with_sample_weight"`.
        name: str. Defaults to `"language_model_loss"`.

    Example:
    >>> import numpy as np
    >>> loss = LanguageModelLoss()
    >>> y_true = np.array([[1, 2, 0]])
    >>> y_pred = np.zeros((1, 3, 5))
    >>> round(float(loss(y_true, y_pred, sample_weight=np.array([[1, 1, 0]]))), 4)
    1.6094
    """

    def __init__(self, reduction="mean_with_sample_weight", name="language_model_loss", **kwargs):
        super().__init__(reduction=reduction, name=name, dtype="float32", **kwargs)

    def call(self, y_true, y_pred):
        return token_cross_entropy(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        return config


# === Sigmoid contrastive (SigLIP) ===
def sigmoid_contrastive_loss(
    image_embeddings, text_embeddings, log_temperature, bias, normalize=True, present=None
):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image
    Pre-Training", Algorithm 1).

    `logits = z_img @ z_txt.T * exp(t') + b`, `labels = 2 * I - 1` (matching pairs on the
    diagonal), `loss = -sum(log_sigmoid(labels * logits)) / batch`: the mean over images of
    the summed pair losses, as big_vision's trainer.

    Args:
        image_embeddings: float tensor `(batch, dim)`.
        text_embeddings: float tensor `(batch, dim)`; row `i` pairs with image row `i`.
        log_temperature: scalar. `t'`; the temperature is `exp(t')`.
        bias: scalar. `b`.
        normalize: bool. L2-normalise the embeddings first. Defaults to `True`.
        present: `None` or bool `(batch,)`. Rows without an image (or text) take no part:
            only pairs of present rows count and the sum is divided by their number.

    Returns:
        A float32 scalar.
    """
    _check_rank("image_embeddings", image_embeddings, 2)
    _check_rank("text_embeddings", text_embeddings, 2)
    _check_same_dims(("image_embeddings", "text_embeddings"), (image_embeddings, text_embeddings), (0, 1))
    z_img = ops.cast(image_embeddings, "float32")
    z_txt = ops.cast(text_embeddings, "float32")
    if normalize:
        z_img = z_img * ops.rsqrt(ops.sum(ops.square(z_img), axis=-1, keepdims=True) + 1e-12)
        z_txt = z_txt * ops.rsqrt(ops.sum(ops.square(z_txt), axis=-1, keepdims=True) + 1e-12)
    temperature = ops.exp(ops.cast(log_temperature, "float32"))
    logits = ops.matmul(z_img, ops.transpose(z_txt)) * temperature + ops.cast(bias, "float32")
    batch_size = ops.shape(z_img)[0]
    labels = 2.0 * ops.eye(batch_size, dtype="float32") - 1.0
    pair_losses = ops.log_sigmoid(labels * logits)
    if present is None:
        return -ops.sum(pair_losses) / ops.cast(batch_size, "float32")
    present = ops.cast(present, "float32")
    pairs = present[:, None] * present[None, :]
    return -ops.sum(pair_losses * pairs) / ops.maximum(ops.sum(present), 1.0)


@keras.saving.register_keras_serializable(package="vishwam_keras")
class SigmoidContrastiveLoss(keras.layers.Layer):
    """SigLIP loss as a layer holding its learnable temperature and bias.

    Holds `log_temperature` (`t'`, the temperature is `exp(t')`, initialised to
    `log(initial_temperature)`) and `bias` (initialised to `initial_bias`), SigLIP's
    initialisation `t = 10`, `b = -10`. Living inside a model, the two scalars train with
    it and a curriculum can freeze them by name (`"contrastive*"`). Weights and the loss are
    always float32, whatever the dtype policy.

    Args:
        initial_temperature: float. Defaults to `10.0`.
        initial_bias: float. Defaults to `-10.0`.
        normalize: bool. L2-normalise the embeddings. Defaults to `True`.

    Call arguments:
        image_embeddings: float tensor `(batch, dim)`.
        text_embeddings: float tensor `(batch, dim)`.

    Example:
    >>> import numpy as np
    >>> head = SigmoidContrastiveLoss(name="contrastive_head")
    >>> z = np.eye(4, 8, dtype="float32")
    >>> tuple(head(z, z).shape)
    ()
    """

    def __init__(self, initial_temperature=10.0, initial_bias=-10.0, normalize=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(autocast=False, **kwargs)
        if not initial_temperature > 0:
            raise ValueError(
                f"`initial_temperature` must be positive. Received: "
                f"initial_temperature={initial_temperature!r}"
            )
        self.initial_temperature = float(initial_temperature)
        self.initial_bias = float(initial_bias)
        self.normalize = bool(normalize)

    def build(self, input_shape=None):
        self.log_temperature = self.add_weight(
            name="log_temperature",
            shape=(),
            initializer=keras.initializers.Constant(math.log(self.initial_temperature)),
            dtype="float32",
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_bias),
            dtype="float32",
        )
        self.built = True

    def call(self, image_embeddings, text_embeddings, present=None):
        return sigmoid_contrastive_loss(
            image_embeddings, text_embeddings, self.log_temperature, self.bias, self.normalize,
            present=present,
        )

    @property
    def temperature(self):
        return ops.exp(self.log_temperature)

    def compute_output_shape(self, image_embeddings_shape, text_embeddings_shape=None, present_shape=None):
        return ()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "initial_temperature": self.initial_temperature,
                "initial_bias": self.initial_bias,
                "normalize": self.normalize,
            }
        )
        return config


# === Combining the losses ===
def _check_loss_factors(argument, factors, loss_names=None):
    """`factors` (`None` or dict `{loss name: finite float >= 0}`) as a dict of floats.

    With `loss_names`, names outside it are refused too."""
    factors = {} if factors is None else factors
    if not isinstance(factors, dict):
        raise ValueError(
            f"`{argument}` must be None or a dict {{loss name: float >= 0}}. "
            f"Received: {argument}={factors!r}"
        )
    if not all(isinstance(name, str) for name in factors):
        raise ValueError(f"`{argument}` must have loss names as keys. Received: {argument}={factors!r}")
    unknown = sorted(set(factors) - set(loss_names)) if loss_names is not None else []
    if unknown:
        raise ValueError(
            f"`{argument}` has names outside loss_names={loss_names}: {unknown}. "
            f"Received: {argument}={factors!r}"
        )
    return {name: check_float(f"{argument}[{name!r}]", value) for name, value in factors.items()}


@keras.saving.register_keras_serializable(package="vishwam_keras")
class MultimodalLoss(keras.layers.Layer):
    """Weights and sums named losses; tracks each part as a metric for the fit logs.

    With `weighting="uncertainty"` (Kendall, Gal and Cipolla 2018, "Multi-Task Learning
    Using Uncertainty to Weigh Losses", eq. 7 with `s = log sigma^2`) the total is
    `sum_i exp(-s_i) * L_i + s_i` with one learnable `s_i` per loss, initialised to 0, so
    the model learns how much each task counts. With `weighting="fixed"` it is
    `sum_i w_i * L_i` with `loss_weights` (default 1 each). Only the losses present in a
    call take part; when a single loss is present it is returned unweighted, so a
    text-only batch trains on exactly the language-model loss.

    `call` returns a dict: `"loss"` (the total), `"<name>_loss"` for every part present and,
    for uncertainty weighting, `"<name>_weight"` (`exp(-s_i)`). `update_metrics(parts)`
    records the parts in `keras.metrics.Mean` trackers owned by this layer; Keras lists
    them in `model.metrics`, so they appear in `fit` logs and the progress bar (reset each
    epoch). `compute_multimodal_loss` does both.

    Args:
        loss_names: sequence of str. Names of the losses. Defaults to
            `("language_modeling", "contrastive")`.
        weighting: str. `"uncertainty"` or `"fixed"`. Defaults to `"uncertainty"`.
        loss_weights: `None` or dict `{name: float}`. Weights for `"fixed"`. Defaults to 1.

    Call arguments:
        losses: dict `{name: scalar}`; names outside `loss_names` raise, missing or `None`
            entries are skipped.

    Example:
    >>> weighting = MultimodalLoss(name="multimodal_loss")
    >>> parts = weighting({"language_modeling": 2.0, "contrastive": 1.0})
    >>> float(parts["loss"])  # exp(0) * 2 + 0 + exp(0) * 1 + 0
    3.0
    """

    def __init__(
        self,
        loss_names=(LANGUAGE_MODELING, CONTRASTIVE),
        weighting="uncertainty",
        loss_weights=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(autocast=False, **kwargs)
        loss_names = [loss_names] if isinstance(loss_names, str) else list(loss_names)
        if not loss_names or len(set(loss_names)) != len(loss_names) or not all(
            isinstance(name, str) and name for name in loss_names
        ):
            raise ValueError(
                "`loss_names` must be a non-empty list of distinct strings. Received: "
                f"loss_names={loss_names!r}"
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"`weighting` must be one of {list(WEIGHTINGS)}. Received: weighting={weighting!r}"
            )
        loss_weights = _check_loss_factors("loss_weights", loss_weights, loss_names)
        if loss_weights and weighting != "fixed":
            raise ValueError(
                "`loss_weights` only applies to weighting='fixed'. Received: "
                f"weighting={weighting!r}, loss_weights={loss_weights!r}"
            )
        self.loss_names = loss_names
        self.weighting = weighting
        self.loss_weights = {name: float(loss_weights.get(name, 1.0)) for name in loss_names}
        self.loss_scales = {name: 1.0 for name in loss_names}
        self.loss_trackers = {
            name: keras.metrics.Mean(name=f"{name}_loss") for name in loss_names
        }

    def set_loss_scales(self, loss_scales=None):
        """Multiply each loss's whole term by a factor (`None` resets every factor to 1).

        A curriculum stage's `loss_scales` (see `CurriculumStage`): `{"contrastive": 0.0}`
        drops the contrastive term, `{"contrastive": 4.0}` makes it count four times as much
        as the weighting alone would. With uncertainty weighting the factor multiplies
        `exp(-s_i) * L_i + s_i`, so the learned weights keep their meaning. Factors are
        read when the train function is traced; `CurriculumCallback` rebuilds it at every
        stage change.

        Args:
            loss_scales: `None` or dict `{name: float >= 0}` over `loss_names`; names left
                out keep the factor 1.
        """
        loss_scales = _check_loss_factors("loss_scales", loss_scales, self.loss_names)
        self.loss_scales = {name: float(loss_scales.get(name, 1.0)) for name in self.loss_names}

    def build(self, input_shape=None):
        if self.weighting == "uncertainty":
            self.log_variances = self.add_weight(
                name="log_variances",
                shape=(len(self.loss_names),),
                initializer="zeros",
                dtype="float32",
            )
        self.built = True

    def _present(self, losses):
        if not isinstance(losses, dict):
            raise ValueError(
                f"`losses` must be a dict {{name: scalar}} with names from {self.loss_names}. "
                f"Received: {type(losses).__name__}"
            )
        unknown = sorted(set(losses) - set(self.loss_names))
        if unknown:
            raise ValueError(
                f"`losses` has names outside loss_names={self.loss_names}: {unknown}"
            )
        present = [(i, name) for i, name in enumerate(self.loss_names) if losses.get(name) is not None]
        if not present:
            raise ValueError(
                f"`losses` must hold at least one of {self.loss_names}. Received keys: {sorted(losses)}"
            )
        return present

    def __call__(self, losses, **kwargs):
        # Keras accepts only tensors in positional structures: convert floats, drop `None`.
        if isinstance(losses, dict):
            losses = {
                name: ops.convert_to_tensor(value, "float32")
                for name, value in losses.items()
                if value is not None
            }
        return super().__call__(losses, **kwargs)

    def call(self, losses):
        present = self._present(losses)
        values = {name: ops.cast(losses[name], "float32") for _, name in present}
        outputs = {f"{name}_loss": value for name, value in values.items()}
        if len(present) == 1:
            name = present[0][1]
            scale = self.loss_scales[name]
            outputs["loss"] = values[name] if scale == 1.0 else scale * values[name]
            return outputs
        total = ops.zeros((), "float32")
        for index, name in present:
            scale = self.loss_scales[name]
            if self.weighting == "uncertainty":
                log_variance = self.log_variances[index]
                weight = ops.exp(-log_variance)
                outputs[f"{name}_weight"] = weight
                term = weight * values[name] + log_variance
            else:
                term = self.loss_weights[name] * values[name]
            if scale != 0.0:
                total = total + (term if scale == 1.0 else scale * term)
        outputs["loss"] = total
        return outputs

    def update_metrics(self, parts):
        """Record `"<name>_loss"` entries of `parts` (as returned by `call`) in the trackers."""
        for name, tracker in self.loss_trackers.items():
            value = parts.get(f"{name}_loss")
            if value is not None:
                tracker.update_state(value)

    def compute_output_spec(self, losses):
        present = self._present(losses)
        spec = {f"{name}_loss": keras.KerasTensor((), "float32") for _, name in present}
        spec["loss"] = keras.KerasTensor((), "float32")
        if len(present) > 1 and self.weighting == "uncertainty":
            spec.update({f"{name}_weight": keras.KerasTensor((), "float32") for _, name in present})
        return spec

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "loss_names": list(self.loss_names),
                "weighting": self.weighting,
                "loss_weights": dict(self.loss_weights) if self.weighting == "fixed" else None,
            }
        )
        return config


def _embeddings_from(x, key, given):
    if given is not None or not isinstance(x, dict):
        return given
    return x.get(key)


def compute_multimodal_loss(
    model,
    x,
    y,
    y_pred,
    sample_weight,
    text_embedding=None,
    image_embedding=None,
    return_parts=False,
):
    """The training loss of a (multimodal) causal LM, for use inside `compute_loss`.

    Computes `language_model_loss(y, logits, sample_weight)`. When both pooled
    embeddings are given (or found in `x` under `"text_embedding"` / `"image_embedding"`),
    also the SigLIP loss from `model.contrastive_head` (a `SigmoidContrastiveLoss`), and
    combines the two with `model.multimodal_loss` (a `MultimodalLoss`), whose part
    trackers are updated so `fit` logs `language_modeling_loss` and `contrastive_loss`.
    Without image embeddings the result is exactly the language-model loss.

    A model uses it by overriding `compute_loss` (see `MultimodalLossMixin`, which does
    this and creates both layers):

    ```python
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = compute_multimodal_loss(self, x, y, y_pred["logits"], sample_weight,
                                       y_pred.get("text_embedding"), y_pred.get("image_embedding"))
        return loss + ops.sum(self.losses) if self.losses else loss
    ```

    The two layers must be attributes of the model (so their weights are model weights:
    on JAX the train step only sees the model's variables) and built.

    Args:
        model: the `keras.Model` being trained.
        x: the batch inputs; read only for precomputed embeddings.
        y: int tensor `(batch, length)`. Target token ids.
        y_pred: float tensor `(batch, length, vocabulary_size)`. Logits.
        sample_weight: `None` or `(batch, length)` loss mask.
        text_embedding: `None` or float tensor `(batch, dim)`. Pooled text embedding.
        image_embedding: `None` or float tensor `(batch, dim)`. Pooled image embedding.
        return_parts: bool. Also return the dict of parts. Defaults to `False`.

    Returns:
        The float32 scalar loss, or `(loss, parts)` with `return_parts=True`.
    """
    if isinstance(y_pred, dict):
        raise ValueError(
            "`y_pred` must be the logits tensor; pass the embeddings as `text_embedding` and "
            f"`image_embedding`. Received a dict with keys {sorted(y_pred)}"
        )
    text_embedding = _embeddings_from(x, "text_embedding", text_embedding)
    image_embedding = _embeddings_from(x, "image_embedding", image_embedding)
    if (text_embedding is None) != (image_embedding is None):
        missing = "text_embedding" if text_embedding is None else "image_embedding"
        raise ValueError(
            f"The contrastive loss needs both embeddings; `{missing}` is None. Pass both "
            "`text_embedding` and `image_embedding`, or neither for a text-only batch."
        )
    lm_loss = language_model_loss(y, y_pred, sample_weight)
    weighting = getattr(model, MULTIMODAL_LOSS_ATTRIBUTE, None)
    if image_embedding is None:
        if isinstance(weighting, MultimodalLoss):
            parts = weighting({LANGUAGE_MODELING: lm_loss})  # applies a stage's factor
            weighting.update_metrics(parts)
        else:
            parts = {f"{LANGUAGE_MODELING}_loss": lm_loss, "loss": lm_loss}
        return (parts["loss"], parts) if return_parts else parts["loss"]

    head = getattr(model, CONTRASTIVE_HEAD_ATTRIBUTE, None)
    if not isinstance(head, SigmoidContrastiveLoss) or not isinstance(weighting, MultimodalLoss):
        raise ValueError(
            f"A multimodal batch needs `model.{CONTRASTIVE_HEAD_ATTRIBUTE}` (a "
            f"SigmoidContrastiveLoss) and `model.{MULTIMODAL_LOSS_ATTRIBUTE}` (a MultimodalLoss) "
            f"set before the model is built; use MultimodalLossMixin. Received: "
            f"{CONTRASTIVE_HEAD_ATTRIBUTE}={type(head).__name__}, "
            f"{MULTIMODAL_LOSS_ATTRIBUTE}={type(weighting).__name__}"
        )
    contrastive = head(image_embedding, text_embedding)
    parts = weighting({LANGUAGE_MODELING: lm_loss, CONTRASTIVE: contrastive})
    weighting.update_metrics(parts)
    return (parts["loss"], parts) if return_parts else parts["loss"]


class MultimodalLossMixin:
    """Gives a task model the multimodal training loss (mix in before the model class).

    `class MyLM(MultimodalLossMixin, VishwamCausalLM)` creates `contrastive_head` (a
    `SigmoidContrastiveLoss`) and `multimodal_loss` (a `MultimodalLoss`) as built sublayers
    before the functional model is traced, and overrides `compute_loss`: `y_pred` is the
    logits tensor (text-only model: the loss is the language-model loss) or a dict with
    `"logits"` and optionally `"text_embedding"` / `"image_embedding"`. The loss passed to
    `compile` is not used; compiled metrics still are.

    Args:
        loss_weighting: str. `"uncertainty"` or `"fixed"`. Defaults to `"uncertainty"`.
        loss_weights: `None` or dict, for `"fixed"`. Defaults to `None`.
        contrastive_initial_temperature: float. Defaults to `10.0`.
        contrastive_initial_bias: float. Defaults to `-10.0`.
    """

    def __init__(
        self,
        *args,
        loss_weighting="uncertainty",
        loss_weights=None,
        contrastive_initial_temperature=10.0,
        contrastive_initial_bias=-10.0,
        **kwargs,
    ):
        head = SigmoidContrastiveLoss(
            initial_temperature=contrastive_initial_temperature,
            initial_bias=contrastive_initial_bias,
            name="contrastive_head",
        )
        weighting = MultimodalLoss(
            weighting=loss_weighting, loss_weights=loss_weights, name="multimodal_loss"
        )
        head.build()
        weighting.build()
        setattr(self, CONTRASTIVE_HEAD_ATTRIBUTE, head)
        setattr(self, MULTIMODAL_LOSS_ATTRIBUTE, weighting)
        super().__init__(*args, **kwargs)
        self.loss_weighting = loss_weighting
        self.loss_weights = loss_weights
        self.contrastive_initial_temperature = contrastive_initial_temperature
        self.contrastive_initial_bias = contrastive_initial_bias

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        text_embedding = image_embedding = None
        if isinstance(y_pred, dict):
            if "logits" not in y_pred:
                raise ValueError(
                    f"`y_pred` dicts must hold `logits`. Received keys: {sorted(y_pred)}"
                )
            text_embedding = y_pred.get("text_embedding")
            image_embedding = y_pred.get("image_embedding")
            y_pred = y_pred["logits"]
        loss = compute_multimodal_loss(
            self, x, y, y_pred, sample_weight, text_embedding, image_embedding
        )
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), loss.dtype)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "loss_weighting": self.loss_weighting,
                "loss_weights": self.loss_weights,
                "contrastive_initial_temperature": self.contrastive_initial_temperature,
                "contrastive_initial_bias": self.contrastive_initial_bias,
            }
        )
        return config


CONTRASTIVE_POOLINGS = ("tokens", "mean")
# The token head keeps at most this many tokens per image side (a 16 x 16 grid is averaged
# to 4 x 4), so its projection stays `16 * width * hidden_dim` at any vision resolution.
CONTRASTIVE_GRID_SIDE = 4


def contrastive_grid(tokens_per_image):
    """`(side, factor)`: a square token grid's side and the average-pooling factor that brings
    it to at most `CONTRASTIVE_GRID_SIDE` per side; `(None, 1)` for a count that is no square."""
    side = math.isqrt(tokens_per_image)
    if side * side != tokens_per_image:
        return None, 1
    factor = 1
    while side // factor > CONTRASTIVE_GRID_SIDE and side % (factor * 2) == 0:
        factor *= 2
    return side, factor


@keras.saving.register_keras_serializable(package="vishwam_keras")
class FeatureStandardization(keras.layers.Layer):
    """`(x - mean) / sqrt(variance + epsilon)` per feature (last axis), with running moments.

    `BatchNormalization(center=False, scale=False)` with a `row_mask`: in training the
    moments come from the rows where `row_mask` is True and update the running ones; a batch
    with no such row leaves them as they are (and is standardised by them) instead of
    dividing by zero. At inference the running moments are used.
    """

    def __init__(self, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum = check_float("momentum", momentum)
        self.epsilon = check_float("epsilon", epsilon, strict=True)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.moving_mean = self.add_weight(
            shape=(dim,), initializer="zeros", trainable=False, name="moving_mean"
        )
        self.moving_variance = self.add_weight(
            shape=(dim,), initializer="ones", trainable=False, name="moving_variance"
        )
        self.built = True

    def call(self, inputs, row_mask=None, training=None):
        x = ops.cast(inputs, "float32")
        mean = ops.convert_to_tensor(self.moving_mean)
        variance = ops.convert_to_tensor(self.moving_variance)
        if training:
            if row_mask is None:
                weights = ops.ones(ops.shape(x)[:-1] + (1,), "float32")
            else:
                weights = ops.cast(row_mask, "float32")[..., None]
            axes = tuple(range(len(x.shape) - 1))
            count = ops.sum(weights, axis=axes)  # (1,)
            safe = ops.maximum(count, 1.0)
            batch_mean = ops.sum(x * weights, axis=axes) / safe
            batch_variance = ops.sum(ops.square(x - batch_mean) * weights, axis=axes) / safe
            seen = count > 0
            m = self.momentum
            self.moving_mean.assign(
                ops.where(seen, m * mean + (1.0 - m) * ops.stop_gradient(batch_mean), mean)
            )
            self.moving_variance.assign(
                ops.where(seen, m * variance + (1.0 - m) * ops.stop_gradient(batch_variance), variance)
            )
            mean = ops.where(seen, batch_mean, mean)
            variance = ops.where(seen, batch_variance, variance)
        outputs = (x - mean) * ops.rsqrt(variance + self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="vishwam_keras")
class ContrastiveAlignment(keras.layers.Layer):
    """Pass-through layer that adds the SigLIP loss between image and text towers in training.

    Sits after the logits in `VishwamCausalLM`'s graph and returns them unchanged. In
    training, for rows with an image, it embeds the text with a text-only pass of the
    decoder (images removed, so the text tower never sees the image it is matched with,
    as in SigLIP's two towers; this costs one extra decoder pass on image batches),
    projects the text and image vectors and adds
    `SigmoidContrastiveLoss(image, text, present)` with `add_loss`; the model's
    `compute_loss` combines it with the language-model loss through `MultimodalLoss`.
    Text-only batches add nothing, and inference never runs the extra pass.

    Two heads (`pooling`):
    - `"tokens"`: each image's vision tokens, in order, are flattened into one vector (a
      square grid larger than 4 x 4 is first averaged down to 4 x 4), so *where* an item
      is survives into the embedding; images of a row are averaged after the projection.
      Both towers' vectors are standardised per feature (`FeatureStandardization`) before
      their projection. A scene of the same items in other places is a different image.
    - `"mean"`: the mean of the vision tokens and of the text states, projected (a bag of
      what is in the image, with no positions; the head of models saved before `"tokens"`).

    Args:
        hidden_dim: int. Width of the pooled vectors and projections.
        image_token_ids: list of ints. Image placeholder/marker ids, excluded from the
            text pooling.
        text_encoder: callable `(token_ids, padding_mask) -> hidden states`, set by the
            model (not serialised).
        initial_temperature, initial_bias: SigLIP initialisation. Defaults to 10 and -10.
        pooling: `"tokens"` or `"mean"`. Defaults to `"mean"` (a layer config without the
            key is an old one); `VishwamCausalLM` builds `"tokens"` heads.
        tokens_per_image: int. Vision tokens per image; needed for `"tokens"`.
    """

    def __init__(
        self, hidden_dim, image_token_ids, text_encoder=None, initial_temperature=10.0,
        initial_bias=-10.0, pooling="mean", tokens_per_image=None, **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in CONTRASTIVE_POOLINGS:
            raise ValueError(
                f"`pooling` must be one of {CONTRASTIVE_POOLINGS}. Received: pooling={pooling!r}"
            )
        if pooling == "tokens":
            tokens_per_image = check_int("tokens_per_image", tokens_per_image)
        self.hidden_dim = hidden_dim
        self.image_token_ids = list(image_token_ids)
        self._text_encoder = text_encoder
        self.initial_temperature = initial_temperature
        self.initial_bias = initial_bias
        self.pooling = pooling
        self.tokens_per_image = tokens_per_image
        self.head = SigmoidContrastiveLoss(initial_temperature, initial_bias, name="head")
        self.text_projection = keras.layers.Dense(
            hidden_dim, use_bias=False, name="text_projection", dtype=self.dtype_policy
        )
        self.image_projection = keras.layers.Dense(
            hidden_dim, use_bias=False, name="image_projection", dtype=self.dtype_policy
        )
        if pooling == "tokens":
            side, factor = contrastive_grid(tokens_per_image)
            self._grid = (side, factor)
            kept = tokens_per_image if side is None else (side // factor) ** 2
            self._image_features = kept * hidden_dim
            self.image_norm = FeatureStandardization(name="image_norm", dtype=self.dtype_policy)
            self.text_norm = FeatureStandardization(name="text_norm", dtype=self.dtype_policy)
        else:
            self._image_features = hidden_dim

    def build(self, logits_shape, *shapes):
        self.head.build()
        self.text_projection.build((None, self.hidden_dim))
        self.image_projection.build((None, self._image_features))
        if self.pooling == "tokens":
            self.text_norm.build((None, self.hidden_dim))
            self.image_norm.build((None, None, self._image_features))
        self.built = True

    def embed_text(self, token_ids, padding_mask, present=None, training=None):
        """Projected text embeddings `(batch, hidden_dim)` from a text-only decoder pass.

        `present` (bool `(batch,)`, rows that are paired with an image) picks the rows
        whose statistics train the `"tokens"` head's standardisation.
        """
        hidden = self._text_encoder(token_ids, padding_mask)
        keep = ops.cast(padding_mask, "bool")
        for token_id in self.image_token_ids:
            keep = ops.logical_and(keep, ops.not_equal(token_ids, token_id))
        pooled = masked_mean(hidden, keep)
        if self.pooling == "tokens":
            pooled = self.text_norm(pooled, row_mask=present, training=training)
        return self.text_projection(pooled)

    def embed_image(self, vision_tokens, vision_mask=None, pooled_image=None, training=None):
        """Projected image embeddings `(batch, hidden_dim)`.

        Args:
            vision_tokens: `(batch, num_images * tokens_per_image, width)` from the backbone
                (`"vision_tokens"`), or for `"mean"` the pooled `(batch, width)` vector.
            vision_mask: bool `(batch, num_images * tokens_per_image)`; `"tokens"` only.
            pooled_image: `(batch, width)`, the mean of the tokens; used by `"mean"`.
        """
        if self.pooling == "mean":
            return self.image_projection(vision_tokens if pooled_image is None else pooled_image)
        width = self.hidden_dim
        batch = ops.shape(vision_tokens)[0]
        side, factor = self._grid
        if factor > 1:
            grid = ops.reshape(vision_tokens, (-1, side, side, width))
            grid = ops.average_pool(grid, factor, factor, padding="valid", data_format="channels_last")
            vision_tokens = ops.reshape(grid, (batch, -1, width))
        per_image = ops.reshape(vision_tokens, (batch, -1, self._image_features))
        if vision_mask is None:
            image_mask = ops.ones(ops.shape(per_image)[:2], "bool")
        else:
            image_mask = ops.cast(vision_mask, "bool")[:, :: self.tokens_per_image]
        per_image = self.image_norm(per_image, row_mask=image_mask, training=training)
        projected = self.image_projection(per_image)
        return masked_mean(projected, image_mask)

    def call(
        self, logits, vision_tokens, vision_mask, pooled_image, image_present, token_ids,
        padding_mask, training=None,
    ):
        if training and image_present.shape[-1] != 0:
            text = self.embed_text(token_ids, padding_mask, present=image_present, training=training)
            image = self.embed_image(vision_tokens, vision_mask, pooled_image, training=training)
            self.add_loss(self.head(image, text, present=image_present))
        return logits

    def compute_output_shape(self, logits_shape, *shapes):
        return logits_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "image_token_ids": self.image_token_ids,
                "initial_temperature": self.initial_temperature,
                "initial_bias": self.initial_bias,
                "pooling": self.pooling,
                "tokens_per_image": self.tokens_per_image,
            }
        )
        return config
