"""``jaxmap add --target-se``: place new models on a map by scoring only the texts they need
(docs/method.md, "Adding a model to a target precision").

The output directory holds ``adaptive.json`` (written atomically after every round: the map,
the settings, and per model its draws, rounds, KL estimates and SEs) and one store per model
and round, ``m<i>-r<r>.h5``, with that round's new texts only. A rerun with the same arguments
reads the state and continues the rounds; a round cut off mid-way is scored again into its
store, which keeps what was already committed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .analysis import AnalysisError, LoglikMatrix, clip, double_center, load_loglik
from .analysis.sequential import (
    MIN_DRAWS,
    SequentialState,
    check_target,
    importance_probabilities,
    sequential_rounds,
)
from .outputs import atomic_output

STATE_FILE = "adaptive.json"



def read_adaptive_state(out: str | Path) -> dict | None:
    """The state file of an adaptive ``out`` directory (or of the directory holding a round
    store), or None when there is none."""
    out = Path(out)
    path = out / STATE_FILE if out.is_dir() else out.parent / STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _write_state(out: Path, state: dict) -> None:
    with atomic_output(out / STATE_FILE) as temporary:
        temporary.write_text(json.dumps(state, indent=1), encoding="utf-8")


# The nearest map models whose KL must reach the target, unless told otherwise.
DEFAULT_NEAREST = 5


def add_adaptive(
    map_store: str | Path | LoglikMatrix,
    models: Sequence[str] | str,
    out: str | Path,
    *,
    target_se: float,
    k: int | None = None,
    method: str = "ls",
    seed: int = 0,
    min_draws: int = MIN_DRAWS,
    clip_quantile: float = 0.02,
    bits_per_byte: bool = False,
    dtype: str = "float32",
    bos_policy: str = "full",
    batch_tokens: int | None = None,
    progress: bool = True,
    max_rounds: int | None = None,
) -> dict:
    """Score each model on importance-drawn texts of the map in growing rounds until the SE of
    its KL to its ``k`` nearest map models (default :data:`DEFAULT_NEAREST`, or every map model
    on a smaller map) is ≤ ``target_se``; see :func:`jaxmap.add_models`,
    which resolves ``bos_policy`` to the map's and makes a Placement of the fields returned."""
    from .checkpoints import expand_references
    from .jobs import score

    matrix = map_store if isinstance(map_store, LoglikMatrix) else load_loglik(map_store)
    if not matrix.is_store:
        raise AnalysisError(f"{matrix.source}: adding models needs the texts, which only a jaxmap store has")
    k = min(DEFAULT_NEAREST, len(matrix.models)) if k is None else k
    check_target(target_se, k, len(matrix.models), min_draws)
    wanted = expand_references([models] if isinstance(models, str) else list(models))
    for reference in wanted:
        if reference in matrix.models:
            raise AnalysisError(f"{reference} is already on the map {matrix.source}")
    text_bytes = matrix.require_text_bytes() if bits_per_byte else None
    policy = bos_policy
    settings = matrix.settings or {}
    clipped, tau = clip(matrix.loglik, clip_quantile)
    probabilities = importance_probabilities(double_center(clipped), method)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "map": str(matrix.source), "text_fingerprint": matrix.text_fingerprint,
        "map_models": len(matrix.models), "tau": tau, "method": method, "seed": seed,
        "min_draws": min_draws, "clip_quantile": clip_quantile,
    }
    saved = read_adaptive_state(out) or {"format": "jaxmap-adaptive", "version": 1, **config, "models": {}}
    changed = [key for key, value in config.items() if saved.get(key) != value and key != "map"]
    if changed:
        raise AnalysisError(f"{out}: an adaptive run with other {', '.join(changed)}; use a new --out")
    saved["target_se"], saved["k"], saved["unit"] = target_se, k, "bits per byte" if bits_per_byte else "nats per text"
    from .store import open_store

    text_set = open_store(matrix.source).text_set  # carries the contexts of conditional maps
    kl_rows, se_rows, texts_scored = [], [], 0
    for model_index, reference in enumerate(wanted):
        entry = saved["models"].setdefault(reference, {"index": len(saved["models"]), "draws": [], "rounds": []})
        prefix = f"m{entry['index']}"
        values = np.full(clipped.shape[1], np.nan)
        for number in range(1, len(entry["rounds"]) + 1):
            stored = _round_values(out / f"{prefix}-r{number}.h5", reference)
            for text_id, value in stored:
                values[matrix.text_ids.index(text_id)] = value
        state = SequentialState(draws=list(entry["draws"]), rounds=list(entry["rounds"]))

        def score_columns(columns, _reference=reference, _prefix=prefix, _state=state):
            round_store = out / f"{_prefix}-r{len(_state.rounds) + 1}.h5"
            scored = score(
                [_reference], text_set.subset(int(c) for c in columns), round_store,
                dtype=dtype, bos_policy=policy, batch_tokens=batch_tokens, progress=progress,
                chat_template=settings.get("chat_template") == "tokenizer",
                pmi=settings.get("values") == "pmi",
            )
            row = scored.loglik[scored.models.index(_reference)]
            by_id = dict(zip(scored.text_ids, row))
            return [by_id[matrix.text_ids[int(c)]] for c in columns]

        def save(current, _values, _entry=entry):
            _entry["draws"], _entry["rounds"] = list(current.draws), list(current.rounds)
            _write_state(out, saved)

        result = sequential_rounds(
            clipped, tau, probabilities, score_columns, target_se=target_se, k=k, seed=seed,
            min_draws=min_draws, text_bytes=text_bytes, state=state, values=values,
            on_round=save, max_rounds=max_rounds,
        )
        order = np.argsort(result.kl, kind="stable")[:k]
        entry.update(
            draws=list(state.draws), rounds=list(state.rounds), reason=result.reason,
            texts=result.texts, nearest_se=float(result.se[order].max()),
            kl=[float(v) for v in result.kl], se=[float(v) for v in result.se],
        )
        _write_state(out, saved)
        kl_rows.append(result.kl)
        se_rows.append(result.se)
        texts_scored = max(texts_scored, result.texts)
    return dict(
        models=wanted, map_models=list(matrix.models), kl=np.vstack(kl_rows),
        unit=saved["unit"], scores=out, subset_texts=texts_scored, se=np.vstack(se_rows),
        finished=[saved["models"][r].get("reason") for r in wanted],
    )


def _round_values(path: Path, reference: str) -> list[tuple[str, float]]:
    """(text id, value) of ``reference`` in a round store."""
    from .store import open_store

    store = open_store(path)
    row = store.loglik[store.models.index(reference)]
    return list(zip(store.text_ids, (float(v) for v in row)))
