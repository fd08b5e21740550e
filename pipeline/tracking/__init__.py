"""Everything MLflow: runs and their hand-off between stages (:mod:`.runs`), a study's parent and trial
runs (:mod:`.trials`), and the encoder as a registered model (:mod:`.registry`)."""

from pipeline.tracking.runs import (
    RUN_ID_FILE,
    close_orphaned_runs,
    git_commit,
    log_metrics,
    read_run_id,
    setup,
    start_run,
    tracking_uri,
    write_run_id,
)

__all__ = ["RUN_ID_FILE", "close_orphaned_runs", "git_commit", "log_metrics", "read_run_id", "setup", "start_run", "tracking_uri",
           "write_run_id"]
