"""The one parity runner behind tests/test_parity*.py: build a small random transformers model from
a case, save it, score it with jaxmap (texts packed into rows, then bucketed by length) and
compare each text's log-likelihood with transformers' (PyTorch, CPU, float32): max |delta| <=
``TOLERANCE`` nats. Each test_parity*.py file keeps its family's case table (``CASES``) and the
checks only that family needs; test_parity_coverage.py checks that every architecture jaxmap
registers has a case in one of those tables.

A case is ``(config factory, options)``, every option optional:

- ``adds_bos``: the tokenizer adds a BOS token (default True);
- ``policy``: the BOS policy scored (default ``"full"``);
- ``norm_center``: where random norm weights centre (default 1.0; Gemma's norms add 1 to theirs);
- ``architecture``: the class config.json names, where it is not transformers' own causal-LM
  class for the config's ``model_type`` (MosaicML's remote-code ``MPTForCausalLM``);
- ``n_ctx``: the context transformers' texts are cut to (default the one the config names);
- ``alone``: transformers scores each text with a freshly loaded model (dynamic NTK keeps the
  frequencies of the longest sequence it has seen for later, shorter ones).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import jaxmap
from jaxmap.errors import UnsupportedModelError

from conftest import PARITY_TOLERANCE, TEXTS, reference_loglik, save_random_model, score_matching_transformers

TOLERANCE = PARITY_TOLERANCE  # nats per text
# A context this short truncates the longest texts, which must then show as truncated.
TRUNCATING_CONTEXT = 50

Case = tuple[Callable[[], Any], dict]

# Registered architectures with no parity case, each with the reason transformers cannot build
# one at random. Empty: every entry of jaxmap.models.ARCHITECTURES has a case.
NO_PARITY_CASE: dict[str, str] = {}


def case_architecture(case: Case, config=None) -> str:
    """The architecture a case's saved config.json names."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    make_config, options = case
    if "architecture" in options:
        return options["architecture"]
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[(config or make_config()).model_type]


def save_case(name: str, case: Case, directory: Path, seed: int | None = None) -> Path:
    """Save the case's random model (seeded by default by the name's length) and its tokenizer."""
    make_config, options = case
    config = make_config()
    directory = save_random_model(
        directory, config, seed=len(name) if seed is None else seed,
        adds_bos=options.get("adds_bos", True), norm_center=options.get("norm_center", 1.0),
    )
    config_path = directory / "config.json"
    saved = json.loads(config_path.read_text())
    if "architecture" in options:
        config_path.write_text(json.dumps({**saved, "architectures": [options["architecture"]]}))
    else:
        # What test_parity_coverage counts this case as covering is what config.json names.
        assert saved["architectures"] == [case_architecture(case, config)], saved["architectures"]
    return directory


def reference(directory: Path, texts: list[str], policy: str, n_ctx: int | None = None, alone: bool = False):
    """transformers' per-text log-likelihoods and scored-token counts; ``alone`` loads a fresh
    model for each text."""
    if not alone:
        return reference_loglik(directory, texts, policy, n_ctx=n_ctx)
    pairs = [reference_loglik(directory, [text], policy, n_ctx=n_ctx) for text in texts]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


@dataclass(frozen=True)
class Parity:
    """One checked policy of one case: the model, transformers' scores and jaxmap's store (the
    packed run's)."""

    directory: Path
    policy: str
    expected: np.ndarray
    counts: np.ndarray
    store: jaxmap.Store

    @property
    def got(self) -> np.ndarray:
        return self.store.loglik[0]

    @property
    def n_ctx(self) -> int:
        return self.store.model_meta[0]["n_ctx"]


def check_parity(
    name: str, case: Case, tmp_path: Path, text_file: Path, *, texts: list[str] = TEXTS,
    policies: tuple[str, ...] | None = None, **score_options,
) -> list[Parity]:
    """Save the case's model and check jaxmap against transformers under each of ``policies``
    (default the case's own): the same tokens scored, log-likelihoods within ``TOLERANCE``
    packed and bucketed, short contexts truncating, and texts that exercise the model.
    ``score_options`` go to :func:`jaxmap.score`."""
    options = case[1]
    directory = save_case(name, case, tmp_path / "model")
    policies = policies or (options.get("policy", "full"),)
    checked = []
    for policy in policies:
        expected, counts = reference(
            directory, texts, policy, n_ctx=options.get("n_ctx"), alone=options.get("alone", False)
        )
        label = name if len(policies) == 1 else f"{name}-{policy}"
        store = score_matching_transformers(
            directory, text_file, tmp_path, expected, counts, label, TOLERANCE, bos_policy=policy,
            **score_options,
        )
        parity = Parity(directory, policy, expected, counts, store)
        if parity.n_ctx < TRUNCATING_CONTEXT:
            assert store.truncated[0].any(), "short contexts must truncate some texts"
        assert (store.ntokens[0][store.truncated[0]] == parity.n_ctx - 1).all()
        # The texts must exercise the model: most carry real, differing log-likelihoods.
        assert np.count_nonzero(expected) >= len(texts) - 3
        checked.append(parity)
    return checked


def force_moe_dispatch(dispatch: str, monkeypatch) -> list[str]:
    """Make decoder.choose_moe_dispatch pick ``dispatch`` ("dense" or "grouped") whatever it
    would, with no scorer compiled under another dispatch reused (the caller clears JAX's
    caches again when done, so that none compiled here is reused once it is unforced). Returns
    the list that each run of that dispatch appends to."""
    from collections import OrderedDict

    import jax

    from jaxmap import engine
    from jaxmap.models import decoder

    calls: list[str] = []
    run = getattr(decoder, f"_{dispatch}_experts")

    def counted(*args, **kwargs):
        calls.append(dispatch)
        return run(*args, **kwargs)

    monkeypatch.setattr(decoder, "choose_moe_dispatch", lambda tokens, config: dispatch)
    monkeypatch.setattr(decoder, f"_{dispatch}_experts", counted)
    monkeypatch.setattr(engine, "_COMPILED", OrderedDict())
    jax.clear_caches()
    return calls


def score(directory: Path, text_file: Path, out: Path, policy: str) -> jaxmap.Store:
    """One jaxmap run, as the parity runs score (batches of 128 tokens)."""
    return jaxmap.score(
        [str(directory)], text_file, out=out, bos_policy=policy, batch_tokens=128, progress=False
    )


def case_hf_config(cases: dict[str, Case], name: str, architecture: str) -> dict:
    """A case's config as the dict a checkpoint's config.json holds, naming ``architecture``."""
    return {**cases[name][0]().to_dict(), "architectures": [architecture]}


def check_refused(cases: dict[str, Case], refusal: tuple) -> None:
    """``refusal`` is ``(parity case, architecture, field, value)``: the case's config is accepted,
    and with ``field`` (a dotted path into nested dicts) set to ``value`` refused by the field's
    name."""
    from jaxmap.models import translate_config

    parity_case, architecture, path, value = refusal
    hf_config = case_hf_config(cases, parity_case, architecture)
    translate_config(hf_config, "tiny")  # the unmodified config is accepted
    *parents, field = path.split(".")
    target = hf_config
    for parent in parents:
        target[parent] = dict(target[parent])
        target = target[parent]
    target[field] = value
    with pytest.raises(UnsupportedModelError, match=re.escape(field)):
        translate_config(hf_config, "tiny")
