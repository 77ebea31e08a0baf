"""Training: the pieces every recipe shares (``run``: accelerator, seed, output folder, resume, export and
the step loop; ``checkpoints``, ``logs``, ``loop``, ``sections``) and the losses of every task (``losses``)."""
