"""The relay's own figures over HTTP: /metrics (Prometheus text) and /health (JSON).

Only counts and states: no device keys exist here, and no payload is ever shown.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def prometheus_text(figures: dict, connected: bool) -> str:
    lines = ["# TYPE linkseal_relay_broker_connected gauge", f"linkseal_relay_broker_connected {int(connected)}"]
    for name, value in figures.items():
        if name in ("spooled", "spool_bytes"):
            lines += [f"# TYPE linkseal_relay_{name} gauge", f"linkseal_relay_{name} {value}"]
        else:
            lines += [f"# TYPE linkseal_relay_{name}_total counter", f"linkseal_relay_{name}_total {value}"]
    return "\n".join(lines) + "\n"


def health(relay) -> dict:
    """ok: the broker is connected and the spool is not refusing frames."""
    figures = relay.figures()
    connected = relay.publisher.connected.is_set()
    quiet = None if relay.last_frame_at is None else round(time.time() - relay.last_frame_at, 1)
    return {"ok": connected and relay.spool.bytes < relay.spool.max_bytes, "broker_connected": connected,
            "seconds_since_last_frame": quiet, **figures}


def serve(relay, host: str, port: int):
    """Start the endpoint in a thread; returns the server (server_address has the real port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/metrics":
                body = prometheus_text(relay.figures(), relay.publisher.connected.is_set()).encode()
                kind = "text/plain; version=0.0.4"
            elif self.path == "/health":
                doc = health(relay)
                body, kind = json.dumps(doc).encode(), "application/json"
                self.send_response(200 if doc["ok"] else 503)
                self._finish(body, kind)
                return
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self._finish(body, kind)

        def _finish(self, body, kind):
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
