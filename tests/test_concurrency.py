"""Several processes writing at once: every write lands, none fails with "database is locked"."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from sqlalchemy import func, select

from adapterctl import audit
from adapterctl.db.models import Feedback

WRITER = textwrap.dedent(
    """
    import sys
    from adapterctl.config import Settings
    from adapterctl.workspace import Workspace

    home, url, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with Workspace(Settings(home=home, db_url=url, user=name)) as ws:
        for i in range(count):
            ws.log_feedback(line="support-bot", prompt=f"{name} question {i}", response="answer", rating=1, source=name)
    """
)


def test_two_processes_logging_at_once_both_succeed(ws, line, settings):
    count = 150
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(settings.home), settings.db_url, name, str(count)], stderr=subprocess.PIPE, text=True
        )
        for name in ("writer-a", "writer-b")
    ]
    errors = [writer.communicate(timeout=300)[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], errors
    with ws.transaction() as session:
        per_source = dict(session.execute(select(Feedback.source, func.count()).group_by(Feedback.source)).all())
        assert per_source == {"writer-a": count, "writer-b": count}
        assert audit.verify(session).ok
