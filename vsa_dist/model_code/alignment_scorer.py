"""The served alignment scorer (MLflow models-from-code): ``mlflow models serve`` runs this file from the model
folder."""

from mlflow.models import set_model

from vsa_dist.serving import AlignmentScorer

set_model(AlignmentScorer())
