"""DVC stage ``evaluate``: linear probe, kNN, collapse metrics and head sparsity of the pretrained encoder (body: :mod:`pipeline.stages.evaluate`)."""

from pipeline.cli import run
from pipeline.stages.evaluate import run as body

if __name__ == "__main__":
    run("evaluate", body)
