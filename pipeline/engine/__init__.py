"""The training engine: the loop (``trainer``: :class:`~pipeline.engine.trainer.Trainer`,
:func:`~pipeline.engine.trainer.train_one_epoch`, :func:`~pipeline.engine.trainer.train`), its checkpoints,
optimisers and schedule (``optim``), quality curves (``monitor``), augmentations, feeding and torchrun."""
