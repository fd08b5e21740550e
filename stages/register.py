"""DVC stage ``register``: the final encoder into the MLflow Model Registry as ``register.policy`` allows (body: :mod:`pipeline.stages.register`)."""

from pipeline.cli import run
from pipeline.stages.register import run as body

if __name__ == "__main__":
    run("register", body)
