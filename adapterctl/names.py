"""Names of lines and base models: they appear in paths of the artifact store and in `line@vN` model names."""

from __future__ import annotations

import re

from adapterctl.errors import InvalidInput

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# Windows refuses these as file names, with or without an extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def check_name(name: str, what: str) -> str:
    """Return `name` if it is a valid name for a `what` (line, base model), else raise InvalidInput."""
    if not _NAME.fullmatch(name or ""):
        raise InvalidInput(
            f"invalid {what} name {name!r}: use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if name.endswith(".") or ".." in name:
        raise InvalidInput(f"invalid {what} name {name!r}: it may not end with '.' or hold '..' (folder names on some systems)")
    if name.split(".")[0] in _RESERVED:
        raise InvalidInput(f"invalid {what} name {name!r}: {name.split('.')[0]!r} is reserved as a file name on Windows")
    return name
