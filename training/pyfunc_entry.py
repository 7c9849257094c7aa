"""The code MLflow runs to build a registered version's pyfunc model ("models from code").

Logged as the model's code instead of a pickled object, so loading a version never
unpickles anything; only MLflow imports this file (it sets the model on import).
"""
import mlflow

from wenlv.training.pyfunc_model import RecommenderModel

mlflow.models.set_model(RecommenderModel())
