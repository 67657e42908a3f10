"""The demo behind `python -m vishwam_keras demo`: a tiny model learns Shakespeare, then writes.

Runs the public API end to end: tokenizer from a preset, preprocessor, `fit`, `generate`.
"""

import time

import keras
import numpy as np

DEMO_PROMPTS = ["ROMEO:", "To be, or not", "The king"]


class TimeBudget(keras.callbacks.Callback):
    """Stops `fit` once `seconds` of training have passed."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True


def shakespeare_token_windows(tokenizer, sequence_length, max_windows=4096, seed=0):
    """Non-overlapping windows of `sequence_length + 1` tokens from the bundled plays."""
    from vishwam_keras.data.shakespeare import load_shakespeare_text

    works = load_shakespeare_text()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(works), size=min(6, len(works)), replace=False)
    ids = np.concatenate([np.asarray(tokenizer(works[i])) for i in sorted(chosen)])
    window = sequence_length + 1
    count = min(len(ids) // window, max_windows)
    return ids[: count * window].reshape(count, window).astype("int32")


def run_text_demo(seconds=60.0, seed=0, sequence_length=64, batch_size=16):
    """Train a ~1.5M-parameter model for `seconds`, then sample from three prompts."""
    import vishwam_keras

    keras.utils.set_random_seed(seed)
    preprocessor = vishwam_keras.VishwamCausalLMPreprocessor.from_preset(
        "vishwam_1b", sequence_length=sequence_length
    )
    tokenizer = preprocessor.tokenizer
    windows = shakespeare_token_windows(tokenizer, sequence_length, seed=seed)
    print(f"Training data: {len(windows)} windows of {sequence_length} tokens from Shakespeare.")

    backbone = vishwam_keras.VishwamBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=4,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=128,
        intermediate_dim=256,
        head_dim=32,
        sliding_window_size=32,
        sliding_window_pattern=2,
        final_logit_soft_cap=30.0,
    )
    # Train on pre-tokenised windows; attach the preprocessor for string-in generate.
    model = vishwam_keras.VishwamCausalLM(backbone)
    print(f"Model: {backbone.count_params():,} parameters; training for {seconds:.0f} s.")
    model.compile(
        optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"],
        sampler=keras_hub_sampler(),
    )
    x = {"token_ids": windows[:, :-1], "padding_mask": np.ones_like(windows[:, :-1])}
    model.fit(
        x, windows[:, 1:], batch_size=batch_size, epochs=1000, verbose=1,
        callbacks=[TimeBudget(seconds)],
    )
    model.preprocessor = preprocessor
    print("\nSamples (top-k, k=10):")
    for prompt, text in zip(DEMO_PROMPTS, model.generate(DEMO_PROMPTS, max_length=48)):
        print(f"--- {prompt!r}\n{text}\n")
    return model


def keras_hub_sampler():
    import keras_hub

    return keras_hub.samplers.TopKSampler(k=10, seed=0)
