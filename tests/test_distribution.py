import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import tiny_backbone_kwargs
from vishwam_keras.distribution import (
    _weight_shapes,
    data_parallel,
    get_layout_map,
    memory_per_device,
    model_parallel,
    resolve_layouts,
)

WORKER = os.path.join(os.path.dirname(__file__), "distribution_worker.py")


def _mesh(batch, model):
    # Layout maps only read the mesh's axes: device names need not exist on this host.
    return keras.distribution.DeviceMesh(
        (batch, model), ("batch", "model"), [f"cpu:{i}" for i in range(batch * model)]
    )


def _shapes(**overrides):
    """`{path: shape}` of a tiny backbone, from an abstract build (no weights, no compiles)."""
    return _weight_shapes(tiny_backbone_kwargs(**overrides))


def _assert_valid(layout_map, weights, model_size):
    """Every weight gets a layout of its rank whose sharded axes divide the model axis."""
    for path, shape in weights.items():
        layout = layout_map[path]  # raises if two keys match
        assert layout is not None, path
        assert len(layout.axes) == len(shape), (path, layout.axes, shape)
        for axis, size in zip(layout.axes, shape):
            assert axis in (None, "model"), (path, layout.axes)
            if axis == "model":
                assert size % model_size == 0, (path, layout.axes, shape)


# --- layout maps (any backend, no devices needed) ----------------------------------------


@pytest.mark.parametrize("num_query_heads, num_key_value_heads", [(4, 2), (4, 1), (6, 3)])
def test_layout_map_covers_every_weight_and_never_fails(num_query_heads, num_key_value_heads):
    kwargs = dict(
        num_layers=2, num_query_heads=num_query_heads, num_key_value_heads=num_key_value_heads,
        hidden_dim=24, intermediate_dim=48,
    )
    weights = _shapes(**kwargs)
    assert len(weights) == 1 + 2 * 13 + 1  # embedding, 13 per block, final norm
    for batch_size, model_size in ((8, 1), (4, 2), (1, 3), (2, 4), (1, 8), (1, 16)):
        layout_map = get_layout_map(tiny_backbone_kwargs(**kwargs), _mesh(batch_size, model_size))
        _assert_valid(layout_map, weights, model_size)


def test_heads_sharded_when_they_divide_else_hidden_else_replicated():
    shapes = {
        "decoder_block_0/attention/query/kernel": (32, 4, 8),
        "decoder_block_0/attention/key/kernel": (32, 2, 8),
        "decoder_block_0/attention/value/kernel": (30, 1, 8),
        "decoder_block_0/attention/attention_output/kernel": (4, 8, 32),
        "decoder_block_0/feedforward/gate/kernel": (32, 64),
        "decoder_block_0/feedforward/down/kernel": (64, 32),
        "token_embedding/embeddings": (97, 32),
        "final_norm/scale": (32,),
    }
    resolved = {p: axes for p, (_, axes) in resolve_layouts(shapes, 4).items()}
    assert resolved == {
        "decoder_block_0/attention/query/kernel": (None, "model", None),  # 4 heads / 4
        "decoder_block_0/attention/key/kernel": ("model", None, None),  # 2 heads: hidden
        "decoder_block_0/attention/value/kernel": (None, None, None),  # neither divides
        "decoder_block_0/attention/attention_output/kernel": ("model", None, None),
        "decoder_block_0/feedforward/gate/kernel": (None, "model"),
        "decoder_block_0/feedforward/down/kernel": ("model", None),
        "token_embedding/embeddings": (None, "model"),
        "final_norm/scale": (None,),
    }


def test_layout_map_from_config_names_and_presets_without_building_weights():
    layout_map = get_layout_map("vishwam_12b", _mesh(1, 8))  # 12B: abstract build, no memory
    assert tuple(layout_map["decoder_block_53/attention/query/kernel"].axes) == (None, "model", None)
    assert tuple(layout_map["decoder_block_0/attention/key/kernel"].axes) == (None, "model", None)
    layout_map = get_layout_map("vishwam_1b", _mesh(1, 8))  # 4 query heads, 1 kv head on 8
    assert tuple(layout_map["decoder_block_0/attention/query/kernel"].axes) == ("model", None, None)
    assert tuple(layout_map["decoder_block_0/attention/key/kernel"].axes) == ("model", None, None)
    # 4B: text stack, SigLIP encoder and gated cross-attention blocks, 978 weights.
    weights = _weight_shapes("vishwam_4b")
    layout_map = get_layout_map("vishwam_4b", _mesh(1, 8))
    _assert_valid(layout_map, weights, 8)
    assert len(layout_map) < 60  # regex keys per rule or per layer template, not per weight
    vision_query = "image_embedding/vision_encoder/block_26/attention/query/kernel"
    assert weights[vision_query] == (1152, 16, 72)
    assert tuple(layout_map[vision_query].axes) == (None, "model", None)
    text_key = "decoder_block_33/attention/key/kernel"  # 4 kv heads on 8: hidden dim
    assert tuple(layout_map[text_key].axes) == ("model", None, None)

    config = tiny_backbone_kwargs()
    serialized = {
        "module": "vishwam_keras.models.backbone", "class_name": "VishwamBackbone",
        "config": config, "registered_name": "vishwam_keras>VishwamBackbone",
    }
    for source in (config, serialized, "tiny"):
        weights = _shapes() if source != "tiny" else _weight_shapes("tiny")
        _assert_valid(get_layout_map(source, _mesh(2, 4)), weights, 4)


def test_layout_map_callable_with_only_a_mesh():
    mesh = _mesh(2, 4)
    for layout_map in (get_layout_map(mesh), get_layout_map(mesh, "model", "batch")):
        _assert_valid(layout_map, _shapes(), 4)
        assert tuple(layout_map["decoder_block_1/feedforward/up/kernel"].axes) == (None, "model")
    with pytest.raises(ValueError, match="model_parallel_dim_name"):
        get_layout_map(mesh, model_parallel_dim_name="tensor")


def test_layout_map_degrades_gracefully_on_vision_and_fusion_layers():
    """Name patterns of the coming vision encoder, projector and fusion layers."""
    cheap = dict(kernel_initializer="ones", bias_initializer="zeros")  # no random-init compiles
    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(24, 4, strides=4, name="patch_embedding", **cheap)(image)
    x = keras.layers.Reshape((4, 24))(x)
    x = keras.layers.LayerNormalization(name="attention_norm")(x)
    q = keras.layers.EinsumDense(
        "btd,dnh->btnh", (None, 3, 8), bias_axes="nh", name="query", **cheap
    )(x)
    x = keras.layers.EinsumDense(
        "btnh,nhd->btd", (None, 24), bias_axes="d", name="attention_output", **cheap
    )(q)
    x = keras.layers.Dense(40, name="fc1", **cheap)(x)
    x = keras.layers.Dense(24, name="fc2", **cheap)(x)
    x = keras.layers.Dense(
        10, use_bias=False, name="vision_projector", kernel_initializer="ones"
    )(x)
    x = keras.layers.Dense(7, name="gate_output", **cheap)(x)
    vision_model = keras.Model(image, x, name="vision_encoder")
    weights = {w.path: w.shape for w in vision_model.weights}
    for model_size in (1, 2, 4, 8):
        _assert_valid(get_layout_map(vision_model, _mesh(1, model_size)), weights, model_size)
    layout_map = get_layout_map(vision_model, _mesh(2, 4))
    assert tuple(layout_map["fc1/kernel"].axes) == (None, "model")
    assert tuple(layout_map["query/kernel"].axes) == ("model", None, None)  # 3 heads: d=24
    assert tuple(layout_map["query/bias"].axes) == (None, None)  # (3 heads, 8): replicated
    assert all(a is None for a in layout_map["attention_norm/gamma"].axes)


def test_memory_per_device_table():
    table = memory_per_device(num_devices=8)
    assert [row.name for row in table] == ["vishwam_1b", "vishwam_4b", "vishwam_12b"]
    row = table[2]
    # bfloat16 weights and gradients, two AdamW slots: 8 bytes per parameter in all.
    np.testing.assert_allclose(row.total_gib, row.num_parameters * 8 / 1024**3)
    np.testing.assert_allclose(row.per_device_gib, row.total_gib / 8)
    assert row.optimizer_states_gib == 2 * row.weights_gib
    assert "vishwam_12b" in str(table) and "per device GiB" in str(table)
    (replicated,) = memory_per_device("vishwam_4b", 8, dtype="mixed_bfloat16", sharded=False)
    np.testing.assert_allclose(replicated.per_device_gib, replicated.num_parameters * 16 / 1024**3)
    with pytest.raises(ValueError, match="optimizer"):
        memory_per_device(10**9, 8, optimizer="rmsprop-ish")


@pytest.mark.skipif(
    keras.backend.backend() not in ("jax", "tensorflow"),
    reason="keras.distribution lists devices on JAX and TensorFlow only",
)
def test_helpers_return_keras_distributions():
    assert isinstance(data_parallel(), keras.distribution.DataParallel)
    distribution = model_parallel("tiny", device_count=1)
    assert isinstance(distribution, keras.distribution.ModelParallel)
    assert distribution.batch_dim_name == "batch"


# --- sharded runs on 8 virtual CPU devices (JAX, in a subprocess) -----------------------

EXPECTED_SPECS = {  # trailing replicated axes dropped, as in PartitionSpec
    # batch 8 x model 1: every head count divides 1, heads are "sharded" over one device.
    "8x1": {"query": [None, "model"], "key": [None, "model"], "value": [None, "model"],
            "attention_output": ["model"]},
    # 4 query heads divide 4; 2 kv heads do not: their hidden dimension is sharded.
    "2x4": {"query": [None, "model"], "key": ["model"], "value": ["model"],
            "attention_output": ["model"]},
    # neither 4 nor 2 heads divide 8: hidden dimension everywhere.
    "1x8": {"query": ["model"], "key": ["model"], "value": ["model"],
            "attention_output": [None, None, "model"]},
}
COMMON_SPECS = {"gate": [None, "model"], "up": [None, "model"], "down": ["model"],
                "token_embedding": [None, "model"]}


def _run_worker(*arguments):
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run(
        [sys.executable, WORKER, *arguments], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    return json.loads(line[len("REPORT "):])


def _check(report, meshes):
    assert report["devices"] == 8
    for mesh in meshes:
        result = report["meshes"][mesh]
        expected = dict(COMMON_SPECS, **EXPECTED_SPECS[mesh])
        for path, spec in result["specs"].items():
            layer = path.split("/")[-2]
            assert spec == expected.get(layer, []), (mesh, path, spec)
        assert result["logits_max_abs_diff"] < 1e-5, (mesh, result["logits_max_abs_diff"])
        assert result["generate_equal"], mesh
        np.testing.assert_allclose(result["losses"], report["reference_losses"], rtol=1e-5)
        assert result["weights_max_abs_diff"] < 1e-5, (mesh, result["weights_max_abs_diff"])


pytestmark_jax = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="sharded runs use JAX's virtual CPU devices"
)


@pytestmark_jax
def test_model_parallel_2x4_matches_single_device():
    _check(_run_worker("2x4"), ["2x4"])


@pytest.mark.slow
@pytestmark_jax
def test_all_meshes_match_single_device_with_fit():
    meshes = ["8x1", "2x4", "1x8"]
    _check(_run_worker("--fit", *meshes), meshes)
