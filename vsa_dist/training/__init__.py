"""What every Ray Train stage shares, by concern: its config (``config``), optimisers and schedules (``optim``), the
train stream (``streams``), checkpoints and the best model (``state``), where the loop runs (``session``: a Ray Train
worker, or one process in a tuning trial), the one epoch loop every stage runs (``loop``) and the driver around it:
the Ray and MLflow run, and the stage's ending (``run``). A stage's recipe (``vsa_dist/recipes/``) gives the loop its
model, stream, step and evaluation."""
