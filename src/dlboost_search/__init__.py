"""dlboost-search: hyperparameter search for Keras models, on Optuna."""

__version__ = "0.1.0"
