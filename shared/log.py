"""One line per event on stderr: `key=value` text, or JSON Lines with --log-json.

Callers pass facts (device ids, counts, reasons), never keys or payloads.
"""

import json
import sys
import threading
import time


class EventLog:
    def __init__(self, json_lines: bool = False, stream=None):
        self.json_lines = json_lines
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields) -> None:
        now = time.time()
        if self.json_lines:
            line = json.dumps({"ts": round(now, 3), "event": event, **fields}, default=str)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            line = " ".join([stamp, event] + [f"{key}={_text(value)}" for key, value in fields.items()])
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def _text(value) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text
