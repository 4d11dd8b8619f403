"""From a log-likelihood matrix to the model map (DESIGN.md §1).

Every function takes numpy or JAX arrays and returns numpy float64; the linear algebra runs in
jitted JAX with float64 enabled locally (see :mod:`jaxmap.analysis.geometry`).
"""

from ._arrays import AnalysisError
from .geometry import clip, double_center, kl_matrix, nearest_neighbors, squared_distances
from .inputs import InputError, LoglikMatrix, load_loglik
from .outliers import TextOutliers, text_outliers
from .prediction import PredictionResult, predict_scores
from .projection import project
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

__all__ = [
    "AnalysisError",
    "InputError",
    "LoglikMatrix",
    "MapInfo",
    "PredictionResult",
    "ResamplingCurve",
    "Subset",
    "TextOutliers",
    "clip",
    "double_center",
    "expected_distance_bias",
    "kl_matrix",
    "load_loglik",
    "nearest_neighbors",
    "place_models",
    "predict_scores",
    "project",
    "read_subset",
    "resample",
    "resampled_coordinates",
    "resampling_curve",
    "sampling_probabilities",
    "squared_distances",
    "text_outliers",
    "write_subset",
]
