"""Everything MLflow: runs and their hand-off between stages (:mod:`.runs`), what a run came from
(:mod:`.lineage`), a study's parent and trial runs (:mod:`.trials`), and the encoder as a registered model
(:mod:`.registry`)."""

from pipeline.tracking.lineage import git_commit, lineage_tags, run_name
from pipeline.tracking.runs import (
    RUN_ID_FILE,
    close_orphaned_runs,
    log_metrics,
    read_run_id,
    setup,
    start_run,
    tracking_uri,
    write_run_id,
)

__all__ = ["RUN_ID_FILE", "close_orphaned_runs", "git_commit", "lineage_tags", "log_metrics", "read_run_id",
           "run_name", "setup", "start_run", "tracking_uri", "write_run_id"]
