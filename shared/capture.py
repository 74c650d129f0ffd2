"""Capture files: JSON Lines, one MQTT message per line.

{"t": unix_seconds, "topic": "linkseal/v1/<device>/rec", "payload_b64": "..."}
"""

import base64
import binascii
import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path


class CaptureError(ValueError):
    """A capture that cannot be read; the message names the file and line."""


def encode_line(t: float, topic: str, payload: bytes) -> str:
    return json.dumps({"t": t, "topic": topic, "payload_b64": base64.b64encode(payload).decode()})


def read_capture(path) -> Iterator[tuple[float, str, bytes]]:
    """The messages of a capture as (t, topic, payload), every line checked before any is used.

    Two passes over the file: the first checks every line (so a bad line stops the run before
    anything is counted), the second yields the messages one at a time. Memory does not grow
    with the capture's size.
    """
    path = Path(path)
    for _ in _lines(path):  # the check: _lines parses each line and raises CaptureError
        pass
    return _lines(path)


def _lines(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _parse_line(path, number, line)
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaptureError(f"{path}: is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureError(f"{path}: permission denied") from None
    except UnicodeDecodeError:
        raise CaptureError(f"{path}: not UTF-8 text (a capture is JSON Lines)") from None
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror}") from None


class EventSpool(list):
    """Security events kept in a temporary file instead of memory (`hub verify` over a capture
    of any size). A list to the report's JSON encoder and table, which only take its length and
    iterate it (json's pure-Python encoder, used with indent, does exactly that)."""

    def __init__(self):
        super().__init__()
        self._file = tempfile.TemporaryFile("w+", encoding="utf-8")
        self._count = 0

    def extend(self, events) -> None:
        for event in events:
            self._file.write(json.dumps(event) + "\n")
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self):
        self._file.flush()
        self._file.seek(0)
        for line in self._file:
            yield json.loads(line)
        self._file.seek(0, 2)  # back to the end, for more events

    def close(self) -> None:
        self._file.close()


def _parse_line(path, number, line):
    where = f"{path}:{number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise CaptureError(f"{where}: nested too deeply to be a capture line") from None
    if not isinstance(item, dict):
        raise CaptureError(f"{where}: expected a JSON object")
    for field in ("t", "topic", "payload_b64"):
        if field not in item:
            raise CaptureError(f"{where}: missing field {field!r}")
    t, topic, b64 = item["t"], item["topic"], item["payload_b64"]
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
        raise CaptureError(f"{where}: field 't' must be a finite number of seconds")
    if not isinstance(topic, str):
        raise CaptureError(f"{where}: field 'topic' must be a string")
    if not isinstance(b64, str):
        raise CaptureError(f"{where}: field 'payload_b64' must be a base64 string")
    try:
        payload = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise CaptureError(f"{where}: field 'payload_b64' is not valid base64") from None
    return float(t), topic, payload
