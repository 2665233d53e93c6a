"""Pure statistics for driftmon: baseline profiles, window accumulators, two-sample tests.

No I/O, logging or service code lives here; ``monitor`` builds on it.
"""

from .accumulate import CategoryCounter, NumericHistogram
from .drift import FeaturePolicy, compare_categorical, compare_numeric, decide
from .profile import CategoricalProfile, NumericProfile
from .stats import chi2_homogeneity, holm, js_distance, ks_binned, psi, wasserstein_binned, wasserstein_error_bound

__all__ = [
    "CategoricalProfile",
    "CategoryCounter",
    "FeaturePolicy",
    "NumericHistogram",
    "NumericProfile",
    "chi2_homogeneity",
    "compare_categorical",
    "compare_numeric",
    "decide",
    "holm",
    "js_distance",
    "ks_binned",
    "psi",
    "wasserstein_binned",
    "wasserstein_error_bound",
]
