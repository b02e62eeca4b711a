"""Named crash points, so that tests can kill a real process at an exact step of its work.

`ADAPTERCTL_CRASH_AT=<step>` makes the process SIGKILL itself when it reaches `crash_point(<step>)`:
no cleanup runs, exactly as when the machine or the OOM killer stops it there.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "ADAPTERCTL_CRASH_AT"


def crash_point(step: str) -> None:
    if os.environ.get(VARIABLE) == step:
        os.kill(os.getpid(), signal.SIGKILL)
