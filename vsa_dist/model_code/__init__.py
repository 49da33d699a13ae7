"""The code of the served models (MLflow models-from-code): copied into each logged model folder, run by
``mlflow models serve``. Each file only names the class; the class lives in ``vsa_dist.serving``."""
