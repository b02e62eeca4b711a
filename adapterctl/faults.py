"""Named crash points, so that tests can kill a real process at an exact step of its work.

`ADAPTERCTL_CRASH_AT=<step>` makes the process SIGKILL itself when it reaches `crash_point(<step>)`:
no cleanup runs, exactly as when the machine or the OOM killer stops it there. tests/test_crash.py kills
the real CLI at each point below, on SQLite and PostgreSQL, and checks what holds afterwards.

    feedback.import.staged        the first chunk of a file's records is staged, the rest not yet read
    feedback.import.rows_written  every record and the import's audit event are written, not committed
    feedback.import.committed     the import is committed (all records and its audit event hold)
    train.checkpoint_saved        a resumable checkpoint is complete on disk (`train --resume` continues)
    train.adapter_saved           the adapter is in the staging folder, not yet sealed by a manifest
    artifact.sealed               the staging folder holds the adapter and its manifest, not yet renamed
    artifact.renamed              the artifact folder is in place, no database row names it yet
    train.candidate_added         the candidate row and the run's success are written, not committed
    train.committed               the candidate is committed `evaluating`; the run's work folder is still there
    train.evaluate                the candidate's evaluation is about to start
    activation.added              an activation row and its audit event are written, not committed
                                  (promote, rollback, canary start, share change, abort, completion, fallback)
    activation.committed          a promote, rollback or canary command committed, before it reports
    backup.database_copied        a backup's database snapshot is written, no artifact copied yet (tests/test_backup.py)
    backup.artifacts_copied       every file of a backup is written, its manifest not, nor the folder renamed
"""

from __future__ import annotations

import os
import signal

VARIABLE = "ADAPTERCTL_CRASH_AT"


def crash_point(step: str) -> None:
    if os.environ.get(VARIABLE) == step:
        os.kill(os.getpid(), signal.SIGKILL)
