"""The Flax NNX module: same numbers as the scoring engine, callable logits, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmap
from jaxmap.module import DecoderLM, load

from conftest import TEXTS


@pytest.fixture(scope="module")
def module(tiny_models) -> DecoderLM:
    return load(str(tiny_models[0]))


def test_module_holds_params_config_and_tokenizer(module, tiny_models):
    assert isinstance(module, nnx.Module) and isinstance(module, DecoderLM)
    state = nnx.state(module, nnx.Param)
    leaves = jax.tree.leaves(state)
    assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert module.config.num_layers == 2 and module.architecture == "LlamaForCausalLM"
    assert module.hf_config["hidden_size"] == 64
    assert module.tokenizer.encode("Hello") == jaxmap.load_module(str(tiny_models[0])).tokenizer.encode("Hello")


def test_module_scores_equal_the_engine_bit_for_bit(module, tiny_models, text_file, tmp_path):
    store = jaxmap.score([str(tiny_models[0])], text_file, out=tmp_path / "s.h5", progress=False)
    scores = module.score(text_file)
    assert np.array_equal(scores.loglik, store.loglik[0]), "module and engine run one program"
    assert np.array_equal(scores.ntokens, store.ntokens[0])


def test_logits_agree_with_the_fused_kernel(module):
    ids = [module.tokenizer.bos_token_id, *module.tokenizer.encode(TEXTS[6], add_special_tokens=False)]
    tokens = jnp.asarray([ids], jnp.int32)
    logits = module(tokens)
    assert logits.shape == (1, len(ids), module.config.vocab_size)
    from_logits = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], axis=-1)[..., 0]
    fused = module.token_logprobs(tokens)
    assert fused.shape == (1, len(ids) - 1)
    assert float(jnp.abs(from_logits - fused).max()) < 1e-4


def test_module_is_a_jax_pytree_to_transform(module):
    """nnx.split gives the pure params state; a changed parameter changes the scores."""
    tokens = jnp.asarray([[1, 5, 9, 13, 40, 2]], jnp.int32)
    graphdef, state = nnx.split(module)
    clone = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
    before = clone.token_logprobs(tokens)
    clone.params["final_norm"]["scale"][...] = clone.params["final_norm"]["scale"][...] * 2.0
    after = clone.token_logprobs(tokens)
    assert not np.allclose(before, after)
    assert np.array_equal(module.token_logprobs(tokens), before), "the original is untouched"


def test_import_jaxmap_loads_neither_jax_nor_flax():
    script = (
        "import sys, jaxmap\n"
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules, sorted(sys.modules)\n"
        "import jaxmap.engine\n"
        "assert 'flax' not in sys.modules, 'scoring must not need flax'\n"
        "jaxmap.load_module\n"
        "assert 'flax' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_the_old_import_paths_still_work_with_a_deprecation_warning():
    import jaxmap.models
    import jaxmap.models.module
    from jaxmap.models import layout

    for old, name, new in [
        (jaxmap.models, "DecoderLM", DecoderLM), (jaxmap.models, "load", load),
        (jaxmap.models, "init_params", layout.init_params),
        (jaxmap.models.module, "DecoderLM", DecoderLM), (jaxmap.models.module, "load_module", load),
        (jaxmap.models.module, "param_shapes", layout.param_shapes),
        (jaxmap.models.module, "init_unsupported", layout.init_unsupported),
    ]:
        with pytest.warns(DeprecationWarning, match=rf"{old.__name__}\.{name} moved to "):
            assert getattr(old, name) is new
