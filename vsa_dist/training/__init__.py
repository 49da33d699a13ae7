"""What every Ray Train stage shares, by concern: its config (``config``), optimisers and schedules (``optim``), the
train stream (``streams``), checkpoints and the best model (``state``), where the loop runs (``session``: a Ray Train
worker, or one process in a tuning trial), the Ray and MLflow run (``run``) and the one epoch loop both stages run
(``loop``). The stages feed the loop their model, step and evaluation."""

from vsa_dist.training.config import LR_SCHEDULES, OPTIMIZERS, TrainConfig, check_features
from vsa_dist.training.loop import Task, run_epochs
from vsa_dist.training.optim import epoch_lr, make_optimizer, set_lr
from vsa_dist.training.run import Trained, all_cores, finish, first_reached, fit, ray_storage, say, start_run, train
from vsa_dist.training.session import CHECKPOINT, InProcessSession, RayTrainSession, RunSpec
from vsa_dist.training.state import end_epoch, keep_if_best, log_epoch, restore, save_best, write_best
from vsa_dist.training.streams import DataClock, EpochStreams, epoch_streams, train_dataset

__all__ = ["CHECKPOINT", "LR_SCHEDULES", "OPTIMIZERS", "DataClock", "EpochStreams", "InProcessSession",
           "RayTrainSession", "RunSpec", "Task", "TrainConfig", "Trained", "all_cores",
           "check_features", "end_epoch", "epoch_lr", "epoch_streams", "finish", "first_reached", "fit",
           "keep_if_best", "log_epoch", "make_optimizer", "ray_storage", "restore", "run_epochs", "save_best", "say",
           "set_lr", "start_run", "train", "train_dataset", "write_best"]
