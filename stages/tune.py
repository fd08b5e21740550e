"""DVC stage ``tune``: one worker of the Optuna study of lambda (run several for more workers) (body: :mod:`pipeline.stages.tune`)."""

from pipeline.cli import run
from pipeline.stages.tune import run as body

if __name__ == "__main__":
    run("tune", body)
