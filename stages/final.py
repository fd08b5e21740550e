"""DVC stage ``final``: retrain with the study's choice at the full budget, and evaluate it (body: :mod:`pipeline.stages.final`)."""

from pipeline.cli import run
from pipeline.stages.final import run as body

if __name__ == "__main__":
    run("final", body)
