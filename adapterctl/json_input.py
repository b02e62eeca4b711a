"""JSON from outside (feedback files, HTTP bodies), parsed strictly: every problem is one InvalidInput.

`json.loads` accepts what adapterctl must refuse and crashes on some of what it cannot parse:
- a key given twice in one object (`"rating": 7, "rating": 1`): the last one silently wins;
- NaN, Infinity and numbers like 1e400 (which become infinity): none of them is a JSON number;
- deep nesting raises RecursionError, an integer of over 4,300 digits a bare ValueError;
- a \\u escape of half a surrogate pair (`"\\ud800"`) makes a string that no UTF-8 encoder, database or JSON
  response can take: stored or echoed in an error, it fails later, far from the input.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from adapterctl.errors import InvalidInput

T = TypeVar("T")
_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]|[\ud800-\udfff]")


def read_lines(path: Path, parse: Callable[[Any], T]) -> list[T]:
    """Each non-blank line of a JSONL file, parsed strictly and handed to `parse`; an error names the line."""
    try:
        raw_lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    records = []
    for number, raw in enumerate(raw_lines, start=1):
        if raw.strip():
            try:
                records.append(parse(loads(raw)))
            except InvalidInput as exc:
                raise InvalidInput(f"{Path(path).name} line {number}: {exc}") from None
    return records


def loads(text: str | bytes) -> Any:
    """The JSON value in `text`, or InvalidInput saying what is wrong with it."""
    try:
        decoded = text.decode("utf-8") if isinstance(text, bytes) else text
        value = _DECODER.decode(decoded)
        if _SURROGATE.search(decoded):  # rare: then the exact check, on the value (a valid pair decodes to one character)
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except UnicodeEncodeError:
        raise InvalidInput("not valid JSON: a \\u escape names half of a surrogate pair, which is not a character") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not valid UTF-8 (byte {exc.start + 1})") from None
    except RecursionError:
        raise InvalidInput("not valid JSON: nested too deeply") from None
    except ValueError:  # Python's limit on the digits of an integer
        raise InvalidInput(f"not valid JSON: a number has more than {sys.get_int_max_str_digits()} digits") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        keys = [key for key, _ in pairs]
        duplicate = next(key for index, key in enumerate(keys) if key in keys[:index])
        raise InvalidInput(f"not valid JSON: key {duplicate!r} appears twice in one object")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"not valid JSON: the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> None:
    raise InvalidInput(f"not valid JSON: {name} is not a number JSON knows")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=_finite, parse_constant=_no_constant)
