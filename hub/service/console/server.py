"""The operator console: a read-only web page and JSON API served by the hub (docs/hub.md, Console).

A thin adapter: it routes GET requests to hub/service/console/api.py and to the static files
of hub/service/console/static/, each request on its own read-only SQLite connection (WAL:
readers never hold up the hub's commits). It adds no way in:

- only GET and HEAD exist (anything else is 405); nothing it serves changes state;
- it answers only to its own address in the Host header (a loopback console is otherwise
  readable by a hostile web page through DNS rebinding) and sends no CORS header;
- bound to loopback by default; any other address needs TLS and a token (checked by the
  command line before anything listens);
- a strict Content-Security-Policy: scripts and styles from the console itself only, no
  inline script, no frames;
- live updates by Server-Sent Events, at most MAX_STREAMS at a time, each on its own thread
  and connection with a send timeout, so a slow or stuck browser is dropped and never slows
  ingest; a stream ends after STREAM_LIFETIME_S (the browser's EventSource reconnects where it
  left off), so streams that are never read cannot hold the slots;
- nothing a client does can hold the accept path: the TLS handshake and the request head are
  read on the connection's own thread, each within HEAD_TIMEOUT_S (an idle socket, a
  handshake never started, a request sent a byte at a time are dropped), and at most
  MAX_CONNECTIONS connections are open at once;
- the audit of the event chain, the costly page, is computed at most once per
  AUDIT_CACHE_S and shared, so pollers cannot compete with ingest for the database.
"""

import hmac
import ipaddress
import json
import mimetypes
import socket
import ssl
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from hub.service.console import api as console_api
from hub.service.storage.sqlite import SQLiteReader

MAX_STREAMS = 8
STREAM_POLL_S = 0.5
STREAM_SEND_TIMEOUT_S = 5.0
STREAM_LIFETIME_S = 30.0
MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 10.0  # for the TLS handshake, and again for the request line and headers
AUDIT_CACHE_S = 60.0
ALLOWED_METHODS = "GET, HEAD"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PAGES = ("/", "/index.html")


def static_dir() -> Path:
    return Path(str(resources.files("hub.service.console") / "static"))


def certificate_names(cert_file) -> set:
    """The DNS names and addresses a PEM certificate was issued for."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(names.get_values_for_type(x509.DNSName)) | {
        f"[{ip}]" if ip.version == 6 else str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _in_host_header(name: str) -> str:
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


class _Server(ThreadingHTTPServer):
    """Each connection on its own thread from accept on: the TLS handshake happens there, with
    a deadline, never in the accept loop; connections beyond MAX_CONNECTIONS are closed at once."""

    daemon_threads = True

    def __init__(self, address, handler, tls_context):
        host = address[0].strip("[]")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.tls_context = tls_context
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((host, address[1]), handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            request.settimeout(HEAD_TIMEOUT_S)
            if self.tls_context is not None:
                request = self.tls_context.wrap_socket(request, server_side=True)  # handshake here, within the timeout
            self.finish_request(request, client_address)
        except (OSError, ssl.SSLError):
            pass  # a client that reset, timed out or failed its handshake: nothing to say on stderr
        except Exception as exc:  # a bug: one line, never a traceback
            print(f"linkseal console: internal error ({type(exc).__name__}) serving {client_address[0]}",
                  file=sys.stderr, flush=True)
        finally:
            self.shutdown_request(request)
            self.slots.release()


class ConsoleServer:
    def __init__(self, db, host: str, port: int, token: str | None = None, tls: tuple | None = None):
        """db: a hub's SQLite file, or the hub workers' postgresql:// URL; token: required as
        `Authorization: Bearer TOKEN`; tls: (certificate file, key file)."""
        self.db = db
        self.token = token
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.stopping = threading.Event()
        handler = type("Handler", (_Handler,), {"console": self})
        context = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(*tls)
        self.httpd = _Server((host, port), handler, context)
        bound_host, bound_port = self.httpd.server_address[:2]
        self.address = f"{_in_host_header(bound_host)}:{bound_port}"
        names = {bound_host, host} | ({"localhost", "127.0.0.1", "[::1]"} if is_loopback(bound_host) else set())
        if tls:  # off loopback, browsers use the names its certificate was issued for
            names |= certificate_names(tls[0])
        self.allowed_hosts = {f"{_in_host_header(name)}:{bound_port}" for name in names}
        self.thread = None
        self._audit_lock = threading.Lock()
        self._audit = (float("-inf"), None)  # (monotonic time computed, result)

    def audit(self) -> dict:
        """The audit page, computed at most once per AUDIT_CACHE_S however many ask."""
        with self._audit_lock:
            computed, result = self._audit
            if time.monotonic() - computed >= AUDIT_CACHE_S:
                reader = self.open_reader()
                try:
                    result = console_api.audit(reader)
                finally:
                    reader.close()
                self._audit = (time.monotonic(), result)
            return result

    def open_reader(self):
        """A reader of its own for one request or stream: never the hub's writing connection."""
        if str(self.db).startswith(("postgresql://", "postgres://")):
            from hub.service.storage.postgres import PostgresReader

            return PostgresReader(str(self.db))
        return SQLiteReader.read_only(self.db)

    def start(self) -> "ConsoleServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="console", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    console: ConsoleServer
    server_version = "linkseal-console"
    sys_version = ""

    def log_message(self, format, *args):  # the hub's own log says enough; no request lines on stderr
        pass

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:  # the head is in: the rest of the request may take as long as its answer does
            self.connection.settimeout(None)
        return parsed

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (a bad request line, an unknown method) in the console's form:
        with the security headers, a JSON body, and Allow on 405 and 501."""
        self.close_connection = True
        extra = {"Allow": ALLOWED_METHODS} if code in (405, 501) else None
        self._refuse(code, message or HTTPStatus(code).phrase, extra)

    def do_POST(self):
        self._refuse(405, "read-only console: GET only", {"Allow": ALLOWED_METHODS})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_POST

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head: bool = False):
        console = self.console
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            return self._refuse(400, "exactly one Host header is required")
        if hosts[0] not in console.allowed_hosts:
            return self._refuse(421, "this console answers to its own address only")
        target = urlsplit(self.path)
        if target.scheme or target.netloc:  # absolute form: it must name this console too
            if target.scheme not in ("http", "https") or target.netloc not in console.allowed_hosts:
                return self._refuse(421, "this console answers to its own address only")
        if console.token is not None:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {console.token}".encode()):
                return self._refuse(401, "a token is required", {"WWW-Authenticate": "Bearer"})
        path, query = unquote(target.path), {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
        try:
            if path.startswith("/api/v1/"):
                if path == "/api/v1/stream":
                    return self._stream(console_api.event_id(query.get("after", "0")), head)
                return self._json(self._api(path[len("/api/v1/"):], query), head)
            return self._static(path, head)
        except console_api.NotFound as exc:
            return self._refuse(404, str(exc))
        except (console_api.BadRequest, ValueError) as exc:
            return self._refuse(400, str(exc))
        except Exception as exc:  # a bug or a damaged store: said in one line, never a traceback to the browser
            return self._refuse(500, f"internal error ({type(exc).__name__})")

    def _api(self, route: str, query: dict):
        reader = self.console.open_reader()
        try:
            if route == "links":
                return console_api.links(reader)
            if route == "devices":
                return console_api.devices(reader, query.get("q", ""), query.get("link"), int(query.get("limit", 100)))
            if route.startswith("devices/"):
                return console_api.device(reader, route[len("devices/"):], query.get("span", "24h"))
            if route == "events":
                return console_api.events(reader, int(query.get("after", 0)), int(query.get("limit", 100)),
                                          query.get("kind"), query.get("link"), query.get("device"))
            if route == "series":
                if "link" not in query:
                    raise console_api.BadRequest("link is required")
                return console_api.series(reader, query["link"], query.get("span", "1h"))
            if route == "audit":
                return self.console.audit()
            if route == "watch":
                return console_api.watch(reader)
            if route == "openapi.json":
                return json.loads((static_dir() / "openapi.json").read_text())
            raise console_api.NotFound(f"no API route {route!r}")
        finally:
            reader.close()

    def _stream(self, after: int, head: bool = False):
        """Server-Sent Events: every new security event, as the API's event objects, for at most
        STREAM_LIFETIME_S (then the browser reconnects from the last id it saw)."""
        console = self.console
        if head:
            self.send_response(200)
            self._headers({"Content-Type": "text/event-stream"})
            self.end_headers()
            return
        if not console.streams.acquire(blocking=False):
            return self._refuse(503, f"at most {MAX_STREAMS} live streams at a time")
        try:
            self.send_response(200)
            self._headers({"Content-Type": "text/event-stream"})
            self.end_headers()
            self.close_connection = True
            self.connection.settimeout(STREAM_SEND_TIMEOUT_S)  # a stuck browser is dropped, not waited for
            reader = console.open_reader()
            try:
                self.wfile.write(b"retry: 1000\n\n")
                last_ping = ends = time.monotonic()
                ends += STREAM_LIFETIME_S
                while not console.stopping.is_set() and time.monotonic() < ends:
                    for event in reader.events_after(after, console_api.MAX_EVENTS):
                        self.wfile.write(f"id: {event['id']}\ndata: {json.dumps(event)}\n\n".encode())
                        after = event["id"]
                    if time.monotonic() - last_ping > 10:
                        self.wfile.write(b": ping\n\n")
                        last_ping = time.monotonic()
                    self.wfile.flush()
                    console.stopping.wait(STREAM_POLL_S)
            finally:
                reader.close()
        except OSError:  # the browser went away, or did not read for STREAM_SEND_TIMEOUT_S
            pass
        finally:
            console.streams.release()

    def _static(self, path: str, head: bool):
        name = "index.html" if path in PAGES else path.lstrip("/")
        root = static_dir().resolve()
        target = (root / name).resolve()
        if root not in target.parents or not target.is_file() or name == "openapi.json":
            raise console_api.NotFound(f"no page {path!r}")
        body = target.read_bytes()
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self.send_response(200)
        self._headers({"Content-Type": kind + ("; charset=utf-8" if kind.startswith("text/") or kind.endswith(
            "javascript") else ""), "Content-Length": str(len(body))})
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, payload, head: bool):
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        self.send_response(200)
        self._headers({"Content-Type": "application/json", "Content-Length": str(len(body))})
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _refuse(self, status: int, reason: str, extra: dict | None = None):
        body = json.dumps({"error": reason}).encode()
        self.send_response(status)
        self._headers({"Content-Type": "application/json", "Content-Length": str(len(body)), **(extra or {})})
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _headers(self, headers: dict):
        for name, value in {**SECURITY_HEADERS, **headers}.items():
            self.send_header(name, value)
