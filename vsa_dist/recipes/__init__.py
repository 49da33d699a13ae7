"""Each training stage's recipe: its config (``config``, torch-free: every ``--help`` is built from it), and its task
(``align``, ``mrnn``): the model it builds, what its train stream carries, its step, the dev score that picks the
best epoch, and what runs after training. ``training.run_recipe`` and ``vsa tune`` drive the same task."""
