"""dlboost-search: hyperparameter search for Keras models, on Optuna."""

__all__ = [
    "__version__",
]

__version__ = "0.1.0"
