"""Training: the loop (``qwenpt.training.loop``: :func:`run`, :class:`Trainer`), the optimizer and LR schedule,
the guard, resume and the run folder. The package imports nothing itself, so that importing one part (the
guard's checks, from :mod:`qwenpt.validation`) does not load the loop."""
