"""From a log-likelihood matrix to the model map (docs/method.md).

Every function takes numpy or JAX arrays and returns numpy float64; the linear algebra runs in
jitted JAX with float64 enabled locally (see :mod:`jaxmap.analysis.geometry`).

The scikit-learn and matplotlib parts (prediction, projection, plots) load on first use, so
that ``import jaxmap`` stays quick.
"""

import importlib

from ._arrays import AnalysisError
from .geometry import clip, double_center, kl_matrix, nearest_neighbors, squared_distances
from .inputs import InputError, LoglikMatrix, load_loglik, map_metadata, read_model_table
from .outliers import TextOutliers, text_outliers
from .resampling import (
    ResamplingCurve,
    expected_distance_bias,
    place_models,
    resample,
    resampled_coordinates,
    resampling_curve,
    sampling_probabilities,
)
from .subset import MapInfo, Subset, read_subset, write_subset

_LAZY = {
    "AccuracyResult": ".accuracy",
    "Question": ".accuracy",
    "QuestionError": ".accuracy",
    "question_groups": ".accuracy",
    "store_accuracy": ".accuracy",
    "PredictionResult": ".prediction",
    "predict_scores": ".prediction",
    "project": ".projection",
    "plot_map": ".plots",
    "map_html": ".plots",
    "plot_resampling_curve": ".plots",
    "plot_tree": ".plots",
    "plot_component_tree": ".plots",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AccuracyResult",
    "AnalysisError",
    "InputError",
    "LoglikMatrix",
    "MapInfo",
    "PredictionResult",
    "ResamplingCurve",
    "Subset",
    "Question",
    "QuestionError",
    "TextOutliers",
    "clip",
    "double_center",
    "expected_distance_bias",
    "kl_matrix",
    "load_loglik",
    "map_html",
    "map_metadata",
    "nearest_neighbors",
    "place_models",
    "plot_component_tree",
    "plot_map",
    "plot_resampling_curve",
    "plot_tree",
    "predict_scores",
    "project",
    "question_groups",
    "read_model_table",
    "read_subset",
    "resample",
    "resampled_coordinates",
    "resampling_curve",
    "sampling_probabilities",
    "squared_distances",
    "store_accuracy",
    "text_outliers",
    "write_subset",
]
