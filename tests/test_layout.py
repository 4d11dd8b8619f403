"""The params layout (jaxmap.models.layout) is one table that describes every architecture's params:
each parameter that any parity case's checkpoint converts to is in it, of a shape it gives, and
each that it says the config has is there (a bias only where the checkpoint carries one). The
sharding rules split exactly the layout's logical axes."""

from __future__ import annotations

import importlib
from pathlib import Path

import jax
import numpy as np

from jaxmap.checkpoints import resolve
from jaxmap.models import translate_config
from jaxmap.models.layout import LAYOUT, PARAMS, axis_sizes, init_params, init_unsupported, param_shapes
from jaxmap.sharding import TENSOR_PARALLEL

from conftest import tiny_llama_config
from parity import save_case

TESTS = Path(__file__).resolve().parent


def _leaves(tree: dict) -> dict[str, tuple]:
    return {
        ".".join(key.key for key in path): leaf if isinstance(leaf, tuple) else tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, tuple))[0]
    }


def test_every_parity_case_converts_to_the_params_the_layout_describes(tmp_path):
    checked = set()
    for path in sorted(TESTS.glob("test_parity*.py")):
        for name, case in getattr(importlib.import_module(path.stem), "CASES", {}).items():
            checkpoint = resolve(str(save_case(name, case, tmp_path / path.stem / name)))
            architecture, config = translate_config(checkpoint.config(), name)
            leaves = _leaves(checkpoint.load_params(architecture, config, "float32"))
            unknown = sorted(set(leaves) - set(LAYOUT))
            assert not unknown, f"{name}: params the layout lacks: {unknown}"
            wrong = {p: shape for p, shape in leaves.items() if shape not in LAYOUT[p].shapes(config)}
            assert not wrong, f"{name}: shapes the layout does not give: {wrong}"
            biases = frozenset(param.bias_of for param in PARAMS if param.bias_of and param.path in leaves)
            expected = {param.path for param in PARAMS if param.present(config, biases)}
            missing = sorted(p for p in expected - set(leaves) if not p.endswith(".bias"))
            assert not missing and set(leaves) <= expected, (name, missing, sorted(set(leaves) - expected))
            checked.add(architecture)
    assert len(checked) >= 25, sorted(checked)


def _tiny_decoder():
    return translate_config({**tiny_llama_config().to_dict(), "architectures": ["LlamaForCausalLM"]}, "tiny")[1]


def test_init_params_builds_the_tree_param_shapes_describes():
    decoder = _tiny_decoder()
    assert not init_unsupported(decoder)
    biases = frozenset({"q", "k", "v"})
    params = init_params(decoder, 0, biases)
    assert _leaves(params) == _leaves(param_shapes(decoder, biases))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    assert np.array_equal(init_params(decoder, 0, biases)["embed"], params["embed"]), "seeded"


def test_the_sharding_rules_split_logical_axes_of_the_layout():
    axes = {axis for param in PARAMS for axis in (*param.axes, *param.or_axes)}
    assert set(TENSOR_PARALLEL) <= axes
    assert axes <= set(axis_sizes(_tiny_decoder()))
    # At most one dimension of a parameter is split over the model axis.
    assert all(sum(axis in TENSOR_PARALLEL for axis in param.axes) <= 1 for param in PARAMS)


def test_stacking_copies_transposed_kernels_of_any_size_exactly():
    """stack_layers copies a transposed view (a torch linear's kernel) in blocks of source rows;
    every element must land where np.stack of the transposes puts it, including a last, partial
    block and in bfloat16."""
    import ml_dtypes

    from jaxmap.models.weights import stack_layers

    rng = np.random.default_rng(0)
    for dtype in (np.float32, ml_dtypes.bfloat16):
        torch_weights = [rng.standard_normal((37, 19)).astype(dtype) for _ in range(3)]
        biases = [rng.standard_normal(37).astype(dtype) for _ in range(3)]
        stacked = stack_layers(lambda i: {"kernel": torch_weights[i].T, "bias": biases[i]}, 3)
        assert stacked["kernel"].dtype == dtype
        np.testing.assert_array_equal(stacked["kernel"], np.stack([w.T for w in torch_weights]))
        np.testing.assert_array_equal(stacked["bias"], np.stack(biases))
