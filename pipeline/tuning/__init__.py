"""The Optuna study of lambda, in two topics.

The study: :mod:`.space` (what a trial draws, the baselines, the study's name), :mod:`.objective` (one
trial: train per seed, score on validation), :mod:`.study` (sampler, pruner, budget counts),
:mod:`.selection` (paired gap, interval, the choice and its tie rule), :mod:`.answer`, :mod:`.table`,
:mod:`.plots` and :mod:`.report` (what the study found, as files and MLflow records).

Several workers on one study: :mod:`.worker` (``study.optimize`` with Optuna's heartbeat and retry),
:mod:`.storage` (the storage URL, retries across a database restart), :mod:`.budget` (the exact trial
budget) and :mod:`.recovery` (dead workers' trials), each keeping only what a measurement showed Optuna lacks.
"""
