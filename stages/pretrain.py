"""DVC stage ``pretrain``: SSL + SparseHead on the prepared data; logs to MLflow (body: :mod:`pipeline.stages.pretrain`)."""

from pipeline.cli import run
from pipeline.stages.pretrain import run as body

if __name__ == "__main__":
    run("pretrain", body)
