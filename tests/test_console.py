"""The operator console in a real browser: Debian's chromium driven by Playwright (never a
browser download), against `linkseal hub run --console` fed through a real Mosquitto."""

import json
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent import Sealer, topic_for
from agent import frame as wire
from hub.core.verifier import _escaped
from simulator.lorawan.network import chirpstack_event, chirpstack_topic
from tools.services import LINKSEAL, HubProcess, frames_seen, publish, stored_report, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = '<img src=x onerror="document.title=1">'


def forged(frame: bytes) -> bytes:
    damaged = bytearray(frame)
    damaged[-5] ^= 1  # in the tag; the CRC recomputed: intact, but not authentic
    return bytes(damaged[:-4]) + wire.crc_trailer(bytes(damaged[:-4]))


@pytest.fixture
def hub_with_console(tmp_path, broker, keys):
    """A hub with its console, and known traffic: 8 wifi devices without loss, 4 fibre devices
    losing one frame in ten (far above what fibre should lose), one forgery, one frame from a
    device with a hostile name (an unknown device: the topic is the attacker's)."""
    sealers = {}
    for i in range(8):
        sealers[f"bed-{i:02d}"] = "wifi"
    for i in range(4):
        sealers[f"plc-{i:02d}"] = "fiber"
    for device, link in sealers.items():
        sealers[device] = Sealer(device, bytes.fromhex(keys.provision(device, link)["key"]), link=link)
    traffic = []
    for n in range(50):
        for device, sealer in sealers.items():
            frame = sealer.seal(b"hr=72;spo2=98")
            if not (device.startswith("plc") and n % 10 == 5):
                traffic.append((topic_for(device), frame))
    traffic.append((topic_for("bed-03"), forged(traffic[3][1])))
    traffic.append((f"linkseal/v1/{HOSTILE}/rec", traffic[0][1]))
    # A LoRa device through a ChirpStack integration: radio figures (fCnt 5 lost after sending).
    eui = "0102030405060708"
    lora = keys.provision("field-tx-1", "lora", form="compact", dev_eui=eui)
    field = Sealer("field-tx-1", bytes.fromhex(lora["key"]), link="lora", tag_len=8, compact=True)
    traffic += [(chirpstack_topic(eui), chirpstack_event(eui, field.seal(b"soil"), n)) for n in range(12) if n != 5]
    hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log", "--console", "127.0.0.1:0",
                     "--lorawan", f"chirpstack+mqtt://127.0.0.1:{broker.port}").start()
    try:
        hub.wait_connected()
        wait_for(lambda: any(e["event"] == "lorawan_subscribed" for e in hub.events()), 30, "the subscription")
        publish(broker.port, traffic)
        wait_for(lambda: frames_seen(hub.db) >= len(traffic) - 1, 30, "the traffic at the hub")
        address = wait_for(lambda: next((e["address"] for e in hub.events() if e["event"] == "console"), None), 30,
                           "the console's address")
        yield hub, f"http://{address}", sealers
    finally:
        hub.stop()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


class Watched:
    """A page whose console errors, failed requests and dialogs are collected."""

    def __init__(self, browser, out: Path):
        self.page = browser.new_page(viewport={"width": 1100, "height": 800})
        self.problems = []
        self.out = out
        out.mkdir(exist_ok=True)
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}") if "/stream" not in r.url
                     else None)
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"{r.status}: {r.url}"))
        self.page.on("dialog", lambda d: self.problems.append(f"dialog: {d.message}"))

    def shot(self, name):
        self.page.screenshot(path=str(self.out / f"{name}.png"), full_page=True)


def pct(x):
    return f"{100 * x:.3f}%"


def test_pages_show_what_the_report_says_live_and_escaped(hub_with_console, browser, tmp_path, broker):
    hub, url, sealers = hub_with_console
    watched = Watched(browser, tmp_path / "screenshots")
    page = watched.page
    report = stored_report(hub.db)

    page.goto(url + "/#links")
    page.wait_for_selector("tr[data-link='fiber']")
    for name, link in report["links"].items():
        row = page.locator(f"tr[data-link='{name}']")
        cell = lambda field: row.locator(f"td[data-field='{field}']").inner_text()  # noqa: E731
        assert cell("received") == str(link["received"]) and cell("forged") == str(link["forged"])
        assert cell("replay") == str(link["replay"]) and cell("loss_rate") == pct(link["loss_rate"])
    radio = page.locator("tr[data-radio='lora']")  # LoRaWAN links show their radio figures
    assert radio.locator("td[data-field='lost_after_transmission']").inner_text() == "1"
    assert page.locator("tr[data-gateway='gw-1']").count() == 1
    fiber = page.locator("tr[data-link='fiber']")
    assert "abnormal" in fiber.get_attribute("class") and "above" in fiber.locator("td[data-field='abnormal']").inner_text()
    assert "abnormal" not in (page.locator("tr[data-link='wifi']").get_attribute("class") or "")
    watched.shot("links")

    page.goto(url + "/#charts/1h")
    page.wait_for_selector("[data-chart='fiber'] canvas")
    watched.shot("charts")

    page.goto(url + "/#events")
    page.wait_for_selector("#events-body tr[data-kind='forged']")
    # The hostile device name arrives escaped by the hub (it is not a plain id) and is shown as
    # text: no element made of it, no script run.
    assert page.locator("#events-body").get_by_text(_escaped(HOSTILE), exact=True).count() == 1
    assert page.locator("#events-body img").count() == 0 and page.title() == "linkseal console"
    assert "intact" in page.locator("#audit").inner_text()
    before = page.locator("#events-body tr[data-kind='forged']").count()
    sealer = sealers["bed-05"]
    publish(broker.port, [(topic_for("bed-05"), forged(sealer.seal(b"x")))])  # while the page is open
    # It appears without a reload (the page's CSP forbids evaluating strings, so wait on the element).
    page.locator("#events-body tr[data-kind='forged']").nth(before).wait_for(timeout=10_000)
    watched.shot("events")

    page.goto(url + "/#devices?q=plc")
    page.wait_for_selector("tr[data-device='plc-02']")
    assert page.locator("tr[data-device]").count() == 4
    page.locator("tr[data-device='plc-02'] a").click()
    page.wait_for_selector("h1:text('plc-02')")
    watched.shot("device")
    page.set_viewport_size({"width": 400, "height": 800})  # a narrow window: the wide columns go
    page.goto(url + "/#links")
    page.wait_for_selector("tr[data-link='fiber']")
    assert not page.locator("tr[data-link='fiber'] td.wide").first.is_visible()
    watched.shot("links-narrow")
    assert watched.problems == []


def _get(url, **headers):
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_read_only_own_host_only_strict_headers_and_no_payload(hub_with_console):
    hub, url, _ = hub_with_console
    status, headers, body = _get(url + "/api/v1/links")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert not any(h.lower().startswith("access-control") for h in headers)
    assert _get(url + "/api/v1/links", Host="evil.example:80")[0] == 421  # DNS rebinding
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        request = urllib.request.Request(url + "/api/v1/links", method=method, data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
    for path in ("/api/v1/links", "/api/v1/devices?q=", "/api/v1/devices/bed-01", "/api/v1/events?limit=500"):
        text = _get(url + path)[2].decode()
        assert "spo2" not in text and "payload" not in text  # records' contents never leave the store
    assert _get(url + "/../pyproject.toml")[0] == 404 and _get(url + "/api/v1/devices/nobody")[0] == 404
    assert _get(url + "/api/v1/events?limit=0")[0] == 400


def test_the_openapi_document_describes_every_response(hub_with_console):
    """Schemathesis generates requests for every operation of the document and checks each
    response against it (status codes, content types, schemas)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    hub, url, _ = hub_with_console
    schema = schemathesis.openapi.from_url(url + "/api/v1/openapi.json")
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)  # the same requests on every run: a failure here is a finding, not luck
        def run(case):
            case.call_and_validate(base_url=url)

        try:
            run()
        except Exception as exc:  # every operation's failure, reported together
            failures.append(f"{operation.label}: {exc}")
    assert operations == 7 and failures == []


def test_a_stuck_live_stream_does_not_hold_up_the_hub(hub_with_console, broker):
    """A browser that opens the live stream and never reads: the hub goes on verifying and
    storing, and the console drops that stream instead of waiting for it."""
    hub, url, sealers = hub_with_console
    host, port = url[len("http://"):].rsplit(":", 1)
    stuck = socket.create_connection((host, int(port)))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(f"GET /api/v1/stream?after=0 HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    try:
        before = frames_seen(hub.db)
        sealer = sealers["bed-01"]
        burst = [(topic_for("bed-01"), forged(sealer.seal(b"x"))) for _ in range(2000)]  # 2000 events to stream
        publish(broker.port, burst)
        wait_for(lambda: frames_seen(hub.db) >= before + len(burst), 60, "the burst stored while the stream is stuck")
        wifi = stored_report(hub.db)["links"]["wifi"]
        assert wifi["forged"] + wifi["rate_limited"] >= len(burst) and wifi["forged"] >= 100  # events to stream
    finally:
        stuck.close()


def test_off_loopback_without_tls_and_a_token_is_refused(tmp_path, keys):
    db = tmp_path / "hub.db"
    from hub.service.storage.sqlite import SQLiteStorage

    SQLiteStorage(db).close()
    result = subprocess.run([str(LINKSEAL), "hub", "console", "--db", db, "--listen", "0.0.0.0:0"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "needs TLS" in result.stderr and "Traceback" not in result.stderr
    ipv6 = subprocess.Popen([str(LINKSEAL), "hub", "console", "--db", db, "--listen", "[::1]:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # [::1] is loopback too: served without TLS, and it answers to its bracketed name
        line = ipv6.stdout.readline()
        assert line.startswith("console on http://[::1]:"), line + ipv6.stderr.read()
        assert json.loads(_get(line.split()[2] + "api/v1/links")[2])["links"] == {}
    finally:
        ipv6.send_signal(signal.SIGINT)
        ipv6.wait(10)
    console = subprocess.Popen([str(LINKSEAL), "hub", "console", "--db", db, "--listen", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = console.stdout.readline()
        assert line.startswith("console on http://127.0.0.1:")
        address = line.split()[2]
        assert json.loads(_get(address + "api/v1/links")[2])["links"] == {}
    finally:
        console.send_signal(signal.SIGINT)
        console.wait(10)


def test_the_shipped_chart_library_is_the_npm_package():
    """uPlot comes from npm at development time (`make console-assets`), pinned by package-lock.json."""
    from hub.service.console.server import static_dir

    lock = json.loads((Path(__file__).parent.parent / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/uplot"]["version"]
    npm = Path(__file__).parent.parent / "node_modules" / "uplot" / "dist"
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        assert (static_dir() / "vendor" / name).read_bytes() == (npm / name).read_bytes(), name


def test_hub_toml_console_section_starts_it(tmp_path, broker, keys):
    config = tmp_path / "hub.toml"
    config.write_text('[console]\nlisten = "127.0.0.1:0"\n')
    hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log", "--config", config).start()
    try:
        hub.wait_connected()
        address = wait_for(lambda: next((e["address"] for e in hub.events() if e["event"] == "console"), None), 30,
                           "the console from hub.toml")
        assert _get(f"http://{address}/api/v1/links")[0] == 200
    finally:
        hub.stop()
    config.write_text('[console]\nlisten = "0.0.0.0:0"\n')  # off loopback without TLS and a token: refused
    refused = HubProcess(broker, keys.path, tmp_path / "hub2.db", tmp_path / "hub2.log", "--config", config).start()
    assert refused.process.wait(30) == 2 and "needs TLS" in (tmp_path / "hub2.log").read_text()


def test_demo_keeps_its_console_up_until_ctrl_c(tmp_path):
    demo = subprocess.Popen([str(LINKSEAL), "demo", "--out", tmp_path / "demo", "--console", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = wait_for(lambda: next((l for l in iter(demo.stdout.readline, "") if l.startswith("console on")), None),
                        300, "the demo's console")
        address = line.split()[2]
        links = json.loads(_get(address + "api/v1/links")[2])["links"]
        assert set(links) == {"fiber", "twisted-pair", "coax", "wifi", "ble", "lora"}
        series = json.loads(_get(address + "api/v1/series?link=lora&span=1h")[2])
        assert any(rate is not None for rate in series["loss_rate"])  # the demo's minutes, not empty wall-clock ones
    finally:
        demo.send_signal(signal.SIGINT)
    assert demo.wait(30) == 0


def tls_console_command(tmp_path):
    """`hub console` off loopback over an empty store, with TLS (a CA of the test's own, the
    certificate for console.plant and 127.0.0.1) and a token file (0600); returns (command,
    CA directory, token file)."""
    from hub.keys.pki import init_ca, issue
    from hub.service.storage.sqlite import SQLiteStorage

    db = tmp_path / "hub.db"
    SQLiteStorage(db).close()
    ca = tmp_path / "ca"
    init_ca(ca)
    cert, key = issue(ca, "console.plant", tmp_path, "console", server_hosts=("console.plant", "127.0.0.1"))
    token = tmp_path / "token"
    token.write_text("a-long-random-console-token\n")
    token.chmod(0o600)
    return ([str(LINKSEAL), "hub", "console", "--db", db, "--listen", "0.0.0.0:0", "--console-tls-cert", cert,
             "--console-tls-key", key, "--console-token-file", token], ca, token)


def test_off_loopback_it_serves_tls_and_asks_for_the_token(tmp_path, keys):
    import ssl

    command, ca, token = tls_console_command(tmp_path)
    token.chmod(0o644)
    shared = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert shared.returncode == 2 and "readable by others" in shared.stderr and "Traceback" not in shared.stderr
    token.chmod(0o600)
    console = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = console.stdout.readline()
        port = int(line.split()[2].rstrip("/").rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(ca / "ca.pem"))
        context.check_hostname = False  # the certificate names console.plant; the test connects by address

        def get(**headers):
            request = urllib.request.Request(f"https://127.0.0.1:{port}/api/v1/links",
                                             headers={"Host": f"console.plant:{port}", **headers})
            try:
                with urllib.request.urlopen(request, context=context, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert get() == 401 and get(Authorization="Bearer wrong-token-of-some-length") == 401
        assert get(Host=f"evil.example:{port}", Authorization="Bearer a-long-random-console-token") == 421
        assert get(Authorization="Bearer a-long-random-console-token") == 200
    finally:
        console.send_signal(signal.SIGINT)
        console.wait(10)


def test_the_console_reads_the_hub_workers_postgresql_store(tmp_path, keys, postgres):
    """What hub workers store (here through the workers' own storage, one partition) is shown
    like a single hub's: same links, devices, events."""
    from hardware.link_registry import links_by_code
    from hub.core.report import build_stored_report
    from hub.core.verifier import Verifier
    from hub.service.console.server import ConsoleServer
    from hub.service.ingest import Ingest
    from hub.service.storage.postgres import PartitionStorage, PostgresReader, claim

    sealer = Sealer("pump-1", bytes.fromhex(keys.provision("pump-1", "ble")["key"]), link="ble")
    verifier = Verifier(keys.device_keys(), {code: link.name for code, link in links_by_code().items()})
    storage = PartitionStorage(postgres.url, 0, claim(postgres.url, 0, "test"))
    ingest = Ingest(verifier, storage)
    frames = [sealer.seal(b"r") for _ in range(30)]
    for i, frame in enumerate(frames):
        if i != 10:
            ingest.handle(topic_for("pump-1"), frame, 1_796_000_000.0 + i)
    ingest.handle(topic_for("pump-1"), forged(frames[3]), 1_796_000_040.0)
    ingest.commit()
    storage.close()
    server = ConsoleServer(postgres.url, "127.0.0.1", 0).start()
    try:
        url = f"http://{server.address}/api/v1/"
        links = json.loads(_get(url + "links")[2])["links"]
        reader = PostgresReader(postgres.url)
        expected = build_stored_report(reader)
        reader.close()
        assert links["ble"] == json.loads(json.dumps(expected["links"]["ble"]))
        assert links["ble"]["lost"] == 1 and links["ble"]["forged"] == 1
        device = json.loads(_get(url + "devices/pump-1")[2])
        assert device["device"]["valid"] == 29 and [e["kind"] for e in device["events"]] == ["forged"]
        assert json.loads(_get(url + "devices?q=PUMP")[2])["total"] == 1
        series = json.loads(_get(url + "series?link=ble&span=1h")[2])
        assert any(rate is not None for rate in series["loss_rate"])
        assert json.loads(_get(url + "audit")[2])["chain_intact"] is True
    finally:
        server.stop()


def _raw(address: str, request: bytes, tls_context=None) -> bytes:
    """Send a request as given (no client library fixing it up); everything the console answers."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as sock:
        conn = tls_context.wrap_socket(sock) if tls_context else sock
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_every_answer_carries_the_headers_and_the_request_must_name_the_console(hub_with_console):
    hub, url, _ = hub_with_console
    address = url[len("http://"):]
    own = f"Host: {address}\r\n"
    absolute = _raw(address, f"GET http://evil.example/api/v1/links HTTP/1.1\r\n{own}Connection: close\r\n\r\n".encode())
    assert absolute.startswith(b"HTTP/1.0 421") or absolute.startswith(b"HTTP/1.1 421"), absolute[:80]
    named = _raw(address, f"GET http://{address}/api/v1/links HTTP/1.1\r\n{own}Connection: close\r\n\r\n".encode())
    assert b" 200 " in named.split(b"\r\n")[0]
    two_hosts = _raw(address, f"GET /api/v1/links HTTP/1.1\r\n{own}Host: evil.example\r\n\r\n".encode())
    assert b" 400 " in two_hosts.split(b"\r\n")[0]
    for method in (b"get", b"BREW", b"DELETE"):
        answer = _raw(address, method + f" /api/v1/links HTTP/1.1\r\n{own}Connection: close\r\n\r\n".encode())
        head = answer.split(b"\r\n\r\n")[0].decode()
        assert "Content-Security-Policy: default-src 'none'" in head and "X-Content-Type-Options: nosniff" in head, head
        assert "Allow: GET, HEAD" in head, head
    stream_head = _raw(address, f"HEAD /api/v1/stream HTTP/1.1\r\n{own}Connection: close\r\n\r\n".encode())
    assert stream_head.endswith(b"\r\n\r\n") and b"text/event-stream" in stream_head  # headers, no body
    # A client that resets its connection mid-request leaves no traceback in the hub's output.
    host, port = address.rsplit(":", 1)
    reset = socket.create_connection((host, int(port)))
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    reset.sendall(f"GET /api/v1/events?limit=500 HTTP/1.1\r\n{own}\r\n".encode())
    reset.close()
    assert _get(url + "/api/v1/links")[0] == 200
    assert "Traceback" not in hub.log.read_text()


def test_idle_and_slow_clients_cannot_freeze_the_tls_console(tmp_path):
    """Sockets that never start their TLS handshake, and requests sent a byte at a time, do not
    hold up anyone else; they are dropped after the head timeout. A stream that is never read
    ends after its lifetime."""
    import ssl

    from hub.service.console.server import HEAD_TIMEOUT_S

    command, ca, _ = tls_console_command(tmp_path)
    console = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    idle = []
    try:
        port = int(console.stdout.readline().split()[2].rstrip("/").rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(ca / "ca.pem"))
        context.check_hostname = False
        request = (f"GET /api/v1/links HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer "
                   "a-long-random-console-token\r\nConnection: close\r\n\r\n").encode()
        for _ in range(3):  # TCP only, never a ClientHello
            idle.append(socket.create_connection(("127.0.0.1", port)))
        slow = context.wrap_socket(socket.create_connection(("127.0.0.1", port)))
        slow.sendall(request[:10])  # a request line begun and never finished
        idle.append(slow)
        answer = _raw(f"127.0.0.1:{port}", request, context)
        assert answer.split(b"\r\n")[0].endswith(b"200 OK"), answer[:100]
        # The stalled ones are closed by the console once the head timeout has passed.
        idle[0].settimeout(HEAD_TIMEOUT_S + 20)
        assert idle[0].recv(1) == b""
        slow.settimeout(HEAD_TIMEOUT_S + 20)
        assert slow.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
        console.send_signal(signal.SIGINT)
        _, stderr = console.communicate(timeout=10)
    assert "Traceback" not in stderr


def test_the_audit_is_computed_once_per_interval_however_many_poll(tmp_path, monkeypatch):
    """The audit reads every event: pollers share one result per AUDIT_CACHE_S instead of each
    making the database walk the chain (it competed with ingest)."""
    import threading

    from hub.service.console import server as console_module
    from hub.service.storage.sqlite import SQLiteStorage

    db = tmp_path / "hub.db"
    SQLiteStorage(db).close()
    walks = []
    real_audit = console_module.console_api.audit
    monkeypatch.setattr(console_module.console_api, "audit", lambda reader: walks.append(1) or real_audit(reader))
    server = console_module.ConsoleServer(db, "127.0.0.1", 0)
    try:
        threads = [threading.Thread(target=server.audit) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        results = {json.dumps(server.audit(), sort_keys=True) for _ in range(20)}
        assert len(walks) == 1 and len(results) == 1
        server._audit = (server._audit[0] - console_module.AUDIT_CACHE_S, server._audit[1])  # the interval passes
        server.audit()
        assert len(walks) == 2
    finally:
        server.httpd.server_close()


AXE = Path(__file__).resolve().parent.parent / "node_modules" / "axe-core" / "axe.min.js"


def test_pages_pass_axe_wcag_aa(hub_with_console, browser):
    """axe-core (npm) in the real browser: no serious or critical WCAG 2.1 A/AA violation on the
    Links, Events and Devices pages (colour contrast, labels, table headers among them)."""
    hub, url, _ = hub_with_console
    assert AXE.exists(), f"{AXE} is missing: `make test` installs it with npm ci"
    context = browser.new_context(bypass_csp=True)  # to load axe itself; the pages keep their own CSP otherwise
    page = context.new_page()
    found = {}
    for view, ready in (("links", "tr[data-link='fiber']"), ("events", "#events-body tr"),
                        ("devices", "tr[data-device='plc-02']")):
        page.goto(f"{url}/#{view}")
        page.wait_for_selector(ready)
        page.evaluate(AXE.read_text())
        result = page.evaluate("axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', "
                               "'wcag21a', 'wcag21aa']}})")
        found[view] = [f"{v['id']} ({v['impact']}): {v['nodes'][0]['target']}" for v in result["violations"]
                       if v["impact"] in ("serious", "critical")]
    context.close()
    assert found == {"links": [], "events": [], "devices": []}, found


def test_table_headers_line_up_with_their_columns(hub_with_console, browser):
    """Each header is aligned as its column's cells are (text left, numbers right)."""
    hub, url, _ = hub_with_console
    page = browser.new_page()
    for view, ready in (("devices", "tr[data-device='plc-02']"), ("events", "#events-body tr")):
        page.goto(f"{url}/#{view}")
        page.wait_for_selector(ready)
        mismatched = page.evaluate("""() => [...document.querySelectorAll('main table')].flatMap(table => {
            const heads = [...table.querySelectorAll('thead th')];
            const cells = [...(table.querySelector('tbody tr') || {children: []}).children];
            return heads.map((th, i) => cells[i] && getComputedStyle(th).textAlign !== getComputedStyle(cells[i]).textAlign
                ? th.textContent : null).filter(x => x);
        })""")
        assert mismatched == [], (view, mismatched)
    page.close()


def test_the_watch_page_shows_who_is_silent_and_who_is_in_alarm(tmp_path, broker, keys, browser):
    from agent.sealer import status_topic_for
    from agent.status import BIRTH, status_payload

    config = tmp_path / "hub.toml"
    config.write_text("[watch]\nwindow_s = 10\n")
    quiet = Sealer("bed-01", bytes.fromhex(keys.provision("bed-01", "wifi")["key"]), link="wifi")
    noisy = Sealer("bed-02", bytes.fromhex(keys.provision("bed-02", "wifi")["key"]), link="wifi")
    stranger = Sealer("bed-02", bytes(32), link="wifi")  # its id, not its key
    birth = quiet.seal_status(status_payload(BIRTH, quiet, 0, 0, every=(1, None)))  # heartbeats every second
    traffic = [(status_topic_for("bed-01"), birth), (topic_for("bed-02"), noisy.seal(b"hr=70"))]
    traffic += [(topic_for("bed-02"), stranger.seal(b"hr=%d" % n)) for n in range(8)]
    hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log", "--console", "127.0.0.1:0",
                     "--config", config).start()
    try:
        hub.wait_connected()
        publish(broker.port, traffic)
        wait_for(lambda: {"silent", "behaviour_alarm"} <= {e["kind"] for e in stored_report(hub.db)["events"]}, 60,
                 "bed-01 silent and bed-02 in alarm")
        address = next(e["address"] for e in hub.events() if e["event"] == "console")
        data = json.loads(_get(f"http://{address}/api/v1/watch")[2])
        assert [(q["device"], q["liveness"]) for q in data["quiet"]] == [("bed-01", "silent")]
        assert data["silent_by_link"] == {"wifi": 1}
        assert [(a["device"], a["behaviour"]) for a in data["alarms"]] == [("bed-02", "forgeries")]
        assert data["alarms_by_behaviour"] == {"forgeries": {"wifi": 1}}
        watched = Watched(browser, tmp_path / "screenshots")
        watched.page.goto(f"http://{address}/#watch")
        watched.page.wait_for_selector("tr[data-alarm='bed-02/forgeries']")
        assert watched.page.locator("tr[data-quiet='bed-01']").inner_text().split("\t")[:3] == [
            "bed-01", "wifi", "silent"]
        assert watched.page.locator("tr[data-silent-link='wifi'] td").nth(1).inner_text() == "1"
        watched.shot("watch")
        assert watched.problems == []
    finally:
        hub.stop()
