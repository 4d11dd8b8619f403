"""Scoring jobs: many models on one text set, one committed store row per model.

Every reference is resolved and validated before anything is scored; the next model loads in a
background thread while the current one scores; each finished row is committed to the store
atomically.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ._version import __version__
from .checkpoints import expand_references, resolve
from .engine import DEFAULT_DTYPE, load_model, score_tokens
from .models import DTYPES, translate_config
from .store import Store, StoreWriter, open_store
from .texts import TextSet, load_texts
from .tokenization import POLICIES, cached_tokenize


def _as_text_set(texts: TextSet | str | Path | Sequence[str]) -> TextSet:
    if isinstance(texts, TextSet):
        return texts
    if isinstance(texts, (str, Path)):
        return load_texts(texts)
    return TextSet.from_texts(list(texts))


def score(
    models: Sequence[str] | str,
    texts: TextSet | str | Path | Sequence[str],
    out: str | Path,
    *,
    dtype: str = DEFAULT_DTYPE,
    bos_policy: str = "full",
    batch_tokens: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> Store:
    """Score every model on every text and append one row per model to the store ``out``.

    ``models`` holds model references (local HF directories, hub ids ``org/name[@rev]``,
    ``.gguf`` files, packaged model names, or list files of references). Models whose rows the
    store already holds are skipped, so re-running a killed job computes only what is missing.
    Every reference is validated (config translated) before any scoring starts. Returns the
    store as it is afterwards.
    """
    if bos_policy not in POLICIES:
        raise ValueError(f"unknown BOS policy {bos_policy!r}; choose one of {POLICIES}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    text_set = _as_text_set(texts)
    references = expand_references([models] if isinstance(models, str) else models)
    out = Path(out)
    writer = StoreWriter(out, text_set, created_by=f"jaxmap {__version__}")
    done = set(writer.completed_models())
    todo = [r for r in references if r not in done]
    # Resolve and validate everything before scoring anything; loading reuses these.
    checkpoints = [resolve(r, cache_dir=cache_dir, progress=progress) for r in todo]
    for checkpoint in checkpoints:
        translate_config(checkpoint.config(), checkpoint.reference)
    token_cache = out.with_name(out.name + ".tokens")
    overall = tqdm(total=len(todo), desc="models", unit="model", disable=not progress or len(todo) < 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as loader:
        upcoming = loader.submit(load_model, checkpoints[0], dtype) if todo else None
        for position, reference in enumerate(todo):
            model = upcoming.result()
            upcoming = (
                loader.submit(load_model, checkpoints[position + 1], dtype)
                if position + 1 < len(todo)
                else None
            )
            tokens, tokenizer_id = cached_tokenize(
                text_set, model.tokenizer, bos_policy, token_cache
            )
            result = score_tokens(model, tokens, batch_tokens, progress)
            writer.append(
                reference,
                result.loglik,
                result.ntokens,
                result.truncated,
                {
                    "reference": reference,
                    "revision": model.checkpoint.revision,
                    "source": model.checkpoint.source,
                    "architecture": model.architecture,
                    "dtype": dtype,
                    "bos_policy": bos_policy,
                    "n_ctx": model.config.max_positions,
                    "tokenizer": tokenizer_id,
                    "jaxmap_version": __version__,
                    "load_seconds": model.load_seconds,
                    **result.stats,
                },
            )
            if progress:
                stats = result.stats
                tqdm.write(
                    f"{reference}: {stats['tokens']} tokens in {stats['seconds']:.1f} s "
                    f"({stats['tokens_per_second']:.0f} tok/s) + {stats['compile_seconds']:.1f} s "
                    f"compiling, padding "
                    f"{100 * stats['padding_fraction']:.1f}%, {stats['compilations']} new "
                    f"compilation(s), {int(result.truncated.sum())} truncated"
                )
            del model
            overall.update(1)
    overall.close()
    return open_store(out)
