"""Placing new models on an existing map: score them on a resampled subset only, then compare
them with every map model through the subset's weighted coordinates (docs/method.md).

This is the workflow of ``jaxmap add``: the map's store, a subset file written by
``jaxmap resample`` (its texts, columns, scales and the map's clipping threshold τ), and the
new models' references.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .analysis import AnalysisError, LoglikMatrix, Subset, load_loglik, place_models, read_subset


@dataclass(frozen=True)
class Placement:
    """New models placed on a map.

    ``kl[i, j]`` is the estimated KL from ``models[i]`` to ``map_models[j]``, in ``unit``
    (nats per text, or bits per byte). ``scores`` is the store the new models' scores on the
    ``subset_texts`` texts of the subset were written to. With ``target_se``
    (:func:`add_models`), ``scores`` is the adaptive run's directory, ``subset_texts`` the most
    texts any model needed, ``se`` the standard errors of ``kl`` and ``finished`` each model's
    stopping reason ("target", "all texts", or None if cut off).
    """

    models: list[str]
    map_models: list[str]
    kl: np.ndarray
    unit: str
    scores: Path
    subset_texts: int
    se: np.ndarray | None = None
    finished: list | None = None

    def nearest(self, count: int = 5) -> list[list[tuple[str, float]]]:
        """The ``count`` nearest map models of each new model, nearest first, with their KL."""
        order = np.argsort(self.kl, axis=1, kind="stable")[:, :count]
        return [
            [(self.map_models[j], float(self.kl[i, j])) for j in row] for i, row in enumerate(order)
        ]


def check_subset_matches(subset: Subset, matrix: LoglikMatrix) -> None:
    """Refuse a subset drawn from another map (other texts or number of texts), naming both
    files; note on stderr when the map has gained or lost models since the draw."""
    info = subset.map
    if info.n_texts != matrix.loglik.shape[1]:
        raise AnalysisError(
            f"{subset.path}: drawn from a map of {info.n_texts} texts, "
            f"but {matrix.source} has {matrix.loglik.shape[1]}"
        )
    if matrix.is_store:
        if info.text_fingerprint != matrix.text_fingerprint:
            raise AnalysisError(f"{subset.path}: drawn from another text set than {matrix.source}")
        for text_id, text, column in zip(subset.texts.ids, subset.texts.texts, subset.columns):
            if matrix.text_ids[column] != text_id or matrix.texts[column] != text:
                raise AnalysisError(
                    f"{subset.path}: text {text_id!r} differs from column {column} "
                    f"of {matrix.source}"
                )
    if info.n_models != len(matrix.models):
        print(
            f"note: the subset was drawn when the map had {info.n_models} models; "
            f"it has {len(matrix.models)} now "
            f"(using the subset's τ = {info.tau:.6g})",
            file=sys.stderr,
        )


def map_bos_policy(matrix: LoglikMatrix, requested: str | None) -> str:
    """The BOS policy new models must be scored with: the map's, when its store records it."""
    policies = set()
    if matrix.is_store:
        from .store import read_model_meta

        policies = {meta.get("bos_policy") for meta in read_model_meta(matrix.source)} - {None}
    if len(policies) > 1:
        raise AnalysisError(f"{matrix.source}: its models mix BOS policies {sorted(policies)}")
    if requested and policies and requested not in policies:
        raise AnalysisError(
            f"{matrix.source}: the map was scored with --bos-policy {policies.pop()}, "
            f"not {requested}; placing models needs the same policy"
        )
    return requested or (policies.pop() if policies else "full")


def add_models(
    map_store: str | Path | LoglikMatrix,
    subset: str | Path | Subset | None,
    models: Sequence[str] | str,
    *,
    target_se: float | None = None,
    k: int | None = None,
    method: str = "ls",
    seed: int = 0,
    out: str | Path | None = None,
    bits_per_byte: bool = False,
    dtype: str = "float32",
    bos_policy: str | None = None,
    batch_tokens: int | None = None,
    progress: bool = True,
) -> Placement:
    """Score ``models`` on the texts of ``subset`` only and place them on the map of
    ``map_store``; returns their estimated KL to every map model (:class:`Placement`).

    ``map_store`` is the map's store (or a matrix file, or a loaded :class:`LoglikMatrix`) the
    subset was drawn from by :func:`jaxmap.resample` / ``jaxmap resample``. The new models'
    scores go to the store ``out`` (default: the subset file with suffix ``.h5``), so a rerun
    scores only what is missing. They are scored under the map's BOS policy (``bos_policy``,
    if given, must agree with it), chat template and PMI settings, and clipped with the map's τ. ``bits_per_byte`` reports KL
    in bits per byte (needs a store, which knows the texts' lengths) instead of nats per text.
    Raises :class:`~jaxmap.errors.ModelsFailedError` when a model cannot be scored.

    With ``target_se`` instead of a subset (``subset=None``), each model is scored on texts
    drawn from the map's ``method`` ("ls", "kl" or "uniform") probabilities with the draw
    stream of ``seed``, in growing rounds, until the standard error of its KL to its ``k``
    nearest map models is ≤ ``target_se`` (:mod:`jaxmap.adaptive`); ``out`` is then a directory
    (default: ``adaptive-add``) whose state a rerun continues.
    """
    if target_se is not None:
        if subset is not None:
            raise AnalysisError("give either a subset or target_se, not both")
        from .adaptive import add_adaptive

        matrix = map_store if isinstance(map_store, LoglikMatrix) else load_loglik(map_store)
        result = add_adaptive(
            matrix, models, out if out is not None else "adaptive-add", target_se=target_se,
            k=k, method=method, seed=seed, bits_per_byte=bits_per_byte, dtype=dtype,
            bos_policy=map_bos_policy(matrix, bos_policy), batch_tokens=batch_tokens,
            progress=progress,
        )
        return Placement(**result)
    if subset is None:
        raise AnalysisError("add_models needs a subset file, or target_se")
    subset = subset if isinstance(subset, Subset) else read_subset(subset)
    matrix = map_store if isinstance(map_store, LoglikMatrix) else load_loglik(map_store)
    out = Path(out) if out is not None else subset.path.with_suffix(".h5")
    check_subset_matches(subset, matrix)
    text_bytes = matrix.require_text_bytes() if bits_per_byte else None  # before hours of scoring
    policy = map_bos_policy(matrix, bos_policy)
    from .checkpoints import expand_references
    from .jobs import score

    # Conditional maps: the new models' values must be what the map's rows are.
    settings = matrix.settings or {}
    scored = score(
        models,
        subset.texts,
        out,
        dtype=dtype,
        bos_policy=policy,
        batch_tokens=batch_tokens,
        progress=progress,
        chat_template=settings.get("chat_template") == "tokenizer",
        pmi=settings.get("values") == "pmi",
    )
    wanted = expand_references([models] if isinstance(models, str) else list(models))
    if list(scored.text_ids) != list(subset.texts.ids):
        raise AnalysisError(f"{out}: its texts are not those of {subset.path}")
    rows = [scored.models.index(reference) for reference in wanted]
    try:
        divergences = place_models(
            matrix.loglik,
            subset.map.tau,
            subset.columns,
            subset.scales,
            scored.loglik[rows],
            text_bytes=text_bytes,
        )
    except AnalysisError as error:
        raise AnalysisError(f"{matrix.source} and {out}: {error}") from None
    return Placement(
        models=wanted,
        map_models=list(matrix.models),
        kl=divergences,
        unit="bits per byte" if bits_per_byte else "nats per text",
        scores=out,
        subset_texts=len(subset.columns),
    )
