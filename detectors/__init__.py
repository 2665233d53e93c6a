"""Pure statistics for driftmon: baseline profiles, window accumulators, two-sample tests.

No I/O, logging or service code lives here; ``monitor`` builds on it.
"""

from .accumulate import CategoryCounter, NumericHistogram
from .drift import (FeaturePolicy, compare_categorical, compare_effect, compare_effects, compare_numeric,
                    compare_numerics, decide)
from .fairness import DEFAULT_MIN_GROUP_SIZE, GroupAccumulator, fairness_report
from .performance import ClassificationAccumulator, ConfidenceBasedEstimator, RegressionAccumulator, performance_drop_test
from .profile import CategoricalProfile, NumericProfile
from .sequential import ErrorRateDetector
from .stats import (MaterialTest, chi2_homogeneity, holm, js_distance, ks_binned, material_divergence, material_ks,
                    material_wasserstein, psi, wasserstein_binned, wasserstein_error_bound)

__all__ = [
    "CategoricalProfile",
    "CategoryCounter",
    "ClassificationAccumulator",
    "ConfidenceBasedEstimator",
    "DEFAULT_MIN_GROUP_SIZE",
    "ErrorRateDetector",
    "FeaturePolicy",
    "GroupAccumulator",
    "MaterialTest",
    "NumericHistogram",
    "NumericProfile",
    "RegressionAccumulator",
    "chi2_homogeneity",
    "compare_categorical",
    "compare_effect",
    "compare_effects",
    "compare_numeric",
    "compare_numerics",
    "decide",
    "fairness_report",
    "holm",
    "js_distance",
    "ks_binned",
    "material_divergence",
    "material_ks",
    "material_wasserstein",
    "performance_drop_test",
    "psi",
    "wasserstein_binned",
    "wasserstein_error_bound",
]
