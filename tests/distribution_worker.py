"""Runs a tiny VishwamCausalLM on 8 virtual CPU devices and compares it with one device.

Called by `tests/test_distribution.py` in a fresh process (JAX must see 8 devices before it
initialises): `python distribution_worker.py [--fit] 2x4 [8x1 1x8 ...]`. Prints one JSON
report. Training runs two steps through `fit` with `--fit`, else through `train_on_batch`.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
# 8 virtual devices; cheap XLA compiles (the test runs tiny graphs, compile time dominates).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import tempfile  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from vishwam_keras import VishwamBackbone, VishwamCausalLM  # noqa: E402
from vishwam_keras.distribution import model_parallel  # noqa: E402

BATCH, LENGTH, VOCABULARY = 8, 12, 97
BACKBONE = dict(  # 4 query heads, 2 key/value heads: some do not divide 4 or 8
    vocabulary_size=VOCABULARY, num_layers=2, num_query_heads=4, num_key_value_heads=2,
    hidden_dim=32, intermediate_dim=64, head_dim=8, sliding_window_size=4,
    sliding_window_pattern=2, attention_logit_soft_cap=50.0, final_logit_soft_cap=30.0,
)


def _data():
    rng = np.random.default_rng(0)
    token_ids = rng.integers(1, VOCABULARY, (BATCH, LENGTH)).astype("int32")
    lengths = np.array([LENGTH, LENGTH - 3, 5, LENGTH, 7, LENGTH, 3, 9])
    padding_mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype("int32")
    token_ids *= padding_mask
    prompt_mask = (np.arange(LENGTH)[None] < np.array([2, 4, 3, 5, 2, 6, 3, 4])[:, None])
    return {
        "inputs": {"token_ids": token_ids, "padding_mask": padding_mask},
        "prompts": {
            "token_ids": token_ids * prompt_mask,
            "padding_mask": prompt_mask.astype("int32"),
        },
        "labels": np.roll(token_ids, -1, axis=1),
        "sample_weight": np.roll(padding_mask, -1, axis=1) * (np.arange(LENGTH) < LENGTH - 1),
    }


def _forward(lm, inputs):
    """Logits from one compiled call. `predict` would first call the model eagerly (op by
    op, ~70 small compiles) because Keras finds an unbuilt layer (RotaryEmbedding)."""
    import jax

    forward = jax.jit(lambda trainable, non_trainable, x: lm.stateless_call(trainable, non_trainable, x)[0])
    trainable = [v.value for v in lm.trainable_variables]
    non_trainable = [v.value for v in lm.non_trainable_variables]
    return np.asarray(forward(trainable, non_trainable, inputs))


def _run(lm, data, use_fit):
    """Logits, greedy generation, and two SGD steps (the second loss sees the update)."""
    if use_fit:
        logits = lm.predict(data["inputs"], batch_size=BATCH, verbose=0)
    else:  # one jitted forward: `predict` first runs an eager build pass (see _forward)
        logits = _forward(lm, data["inputs"])
    lm.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        sampler="greedy",
    )
    generated = lm.generate(data["prompts"], stop_token_ids=None)["token_ids"]
    train = (data["inputs"], data["labels"], data["sample_weight"])
    if use_fit:
        losses = lm.fit(*train[:2], sample_weight=train[2], batch_size=BATCH, epochs=2,
                        shuffle=False, verbose=0).history["loss"]
    else:  # the same sharded train step, without fit's epoch machinery
        losses = [float(lm.train_on_batch(*train, return_dict=True)["loss"]) for _ in range(2)]
    weights = {w.path: keras.ops.convert_to_numpy(w.value) for w in lm.backbone.weights}
    return logits, np.asarray(generated), [float(x) for x in losses], weights


def _spec(variable):
    spec = tuple(variable.value.sharding.spec)
    while spec and spec[-1] is None:
        spec = spec[:-1]
    return list(spec)


def main(meshes, use_fit):
    import jax

    data = _data()
    keras.utils.set_random_seed(0)
    reference = VishwamCausalLM(VishwamBackbone(**BACKBONE))
    preset = tempfile.mkdtemp()
    reference.save_to_preset(preset)
    ref_logits, ref_generated, ref_losses, ref_weights = _run(reference, data, use_fit)
    valid = data["inputs"]["padding_mask"].astype(bool)

    report = {"devices": jax.device_count(), "reference_losses": ref_losses, "meshes": {}}
    for mesh in meshes:
        mesh_shape = tuple(int(n) for n in mesh.split("x"))
        keras.distribution.set_distribution(model_parallel(preset, mesh_shape=mesh_shape))
        try:
            lm = VishwamCausalLM.from_preset(preset)
            specs = {w.path: _spec(w) for w in lm.backbone.weights}
            logits, generated, losses, weights = _run(lm, data, use_fit)
        finally:
            keras.distribution.set_distribution(None)
        report["meshes"][mesh] = {
            "specs": specs,
            "logits_max_abs_diff": float(np.abs(logits - ref_logits)[valid].max()),
            "generate_equal": bool((generated == ref_generated).all()),
            "losses": losses,
            "weights_max_abs_diff": max(
                float(np.abs(weights[p] - ref_weights[p]).max()) for p in ref_weights
            ),
        }
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main([a for a in arguments if a != "--fit"] or ["2x4"], use_fit="--fit" in arguments)
