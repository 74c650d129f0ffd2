"""Capture files: JSON Lines, one MQTT message per line.

{"t": unix_seconds, "topic": "linkseal/v1/<device>/rec", "payload_b64": "..."}
"""

import base64
import binascii
import json
from pathlib import Path


class CaptureError(ValueError):
    """A capture that cannot be read; the message names the file and line."""


def encode_line(t: float, topic: str, payload: bytes) -> str:
    return json.dumps({"t": t, "topic": topic, "payload_b64": base64.b64encode(payload).decode()})


def read_capture(path) -> list[tuple[float, str, bytes]]:
    """All messages of a capture as (t, topic, payload), checked before any is used.

    Reading everything first means a bad line stops the run before anything is counted.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
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
    messages = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        messages.append(_parse_line(path, number, line))
    return messages


def _parse_line(path, number, line):
    where = f"{path}:{number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise CaptureError(f"{where}: expected a JSON object")
    for field in ("t", "topic", "payload_b64"):
        if field not in item:
            raise CaptureError(f"{where}: missing field {field!r}")
    t, topic, b64 = item["t"], item["topic"], item["payload_b64"]
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        raise CaptureError(f"{where}: field 't' must be a number of seconds")
    if not isinstance(topic, str):
        raise CaptureError(f"{where}: field 'topic' must be a string")
    if not isinstance(b64, str):
        raise CaptureError(f"{where}: field 'payload_b64' must be a base64 string")
    try:
        payload = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise CaptureError(f"{where}: field 'payload_b64' is not valid base64") from None
    return float(t), topic, payload
