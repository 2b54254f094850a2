"""Names a search space may use that several layers need: the built-in datasets and their
tasks. Below every other module: it imports nothing of ours."""

from __future__ import annotations

__all__ = [
    "BUILTIN_TASKS",
]

# Datasets that packages ship inside their wheels (nothing is downloaded), with their task:
# scikit-learn's tables, digits as 8x8 images, and statsmodels' yearly sunspot numbers as
# windows of 24 years (data.SUNSPOT_WINDOW) -> the next year.
BUILTIN_TASKS = {
    "diabetes": "regression",
    "breast_cancer": "binary",
    "digits": "multiclass",
    "wine": "multiclass",
    "iris": "multiclass",
    "digits_images": "multiclass",
    "sunspots": "regression",
}
