"""DVC stage ``prepare``: a data source -> versioned uint8 arrays + manifest (body: :mod:`pipeline.stages.prepare`)."""

from pipeline.cli import run
from pipeline.stages.prepare import run as body

if __name__ == "__main__":
    run("prepare", body)
