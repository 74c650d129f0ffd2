"""hub run settings: broker URLs, credentials, hub.toml."""

import pytest

from hardware.link_registry import load_links
from hub.service.config import DEFAULT_RATE, ConfigError, load_settings, parse_broker


def test_broker_urls(tmp_path, monkeypatch):
    monkeypatch.delenv("LINKSEAL_MQTT_PASSWORD", raising=False)
    plain = parse_broker("mqtt://broker.local")
    assert (plain.host, plain.port, plain.tls, plain.password) == ("broker.local", 1883, False, None)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    secure = parse_broker("mqtts://10.0.0.2", ca_file=str(ca))
    assert (secure.port, secure.tls, secure.ca_file) == (8883, True, str(ca))
    monkeypatch.setenv("LINKSEAL_MQTT_PASSWORD", "s3cret")
    with_user = parse_broker("mqtt://h:1884", username="hub")
    assert (with_user.port, with_user.username, with_user.password) == (1884, "hub", "s3cret")
    assert "s3cret" not in repr(with_user)
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    assert parse_broker("mqtt://h", password_file=str(secret_file)).password == "from-file"


@pytest.mark.parametrize("url,kwargs,message", [
    ("http://h", {}, "expected mqtt://"),
    ("mqtt://user:pw@h", {}, "not in the URL"),
    ("mqtt://h:99999", {}, "port"),
    ("mqtt://h", {"ca_file": "ca.pem"}, "need an mqtts://"),
    ("mqtts://h", {"cert_file": "c.pem"}, "go together"),
    ("mqtts://h", {"ca_file": "/nonexistent/ca.pem"}, "no such file"),
    ("mqtt://[::1", {}, "expected mqtt://"),
])
def test_bad_broker_settings(url, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        parse_broker(url, **kwargs)


def test_hub_toml(tmp_path):
    links = load_links()
    assert load_settings(None, links).rate_limits["wifi"] == DEFAULT_RATE
    path = tmp_path / "hub.toml"
    path.write_text('[mqtt]\nclient_id = "hub-a"\n[ingest]\nbatch_size = 50\n'
                    '[rate_limits]\ndefault = { rate = 10, burst = 20 }\nlora = { rate = 0.1, burst = 5 }\n')
    settings = load_settings(path, links)
    assert (settings.client_id, settings.batch_size) == ("hub-a", 50)
    assert settings.rate_limits["lora"] == (0.1, 5.0) and settings.rate_limits["wifi"] == (10.0, 20.0)


@pytest.mark.parametrize("text,message", [
    ("[ingest]\nbatch_size = 0\n", "must be a positive finite number"),
    ("[ingest]\nbatch_size = 'many'\n", "must be an integer"),
    ("[rate_limits]\ncarrier-pigeon = { rate = 1, burst = 1 }\n", "not a link type"),
    ("[rate_limits]\nwifi = { rate = 1 }\n", "needs numbers"),
    ("[mqtt\n", "not valid TOML"),
    ('[retention]\nrecords = "a week"\n', "[retention] records 'a week': expected a number and a unit"),
    ('[retention]\nrecrods = "7d"\n', "[retention] recrods: not a retention setting"),
    ('[[forward]]\nhost = "inner"\n', "[[forward]] number 1 needs url"),
    ('forward = "mqtt://x"\n', "forward must be [[forward]] tables"),
    ('[outbox]\nmax_backlog = -1\n', "[outbox] max_backlog must be a positive finite number"),
    ("[mqtt]\nbackoff_max = nan\n", "[mqtt] backoff_max must be a positive finite number"),
    ("[ingest]\nreport_interval = inf\n", "[ingest] report_interval must be a positive finite number"),
    ("[outbox]\nprune_interval = nan\n", "[outbox] prune_interval must be a positive finite number"),
    ("[rate_limits]\ndefault = { rate = nan, burst = 10 }\n", "rate must be a finite number > 0"),
    ("[rate_limits]\nwifi = { rate = 10, burst = inf }\n", "rate must be a finite number > 0"),
    ("[ingest]\nbatchsize = 10\n", "[ingest] batchsize: not a setting of [ingest]"),
    ("[rate_limit]\ndefault = { rate = 1, burst = 1 }\n", "[rate_limit]: not a hub.toml section"),
    ("[mqtt]\nkeepalive = 100000\n", "[mqtt] keepalive must be at most 65535"),
    ('[mqtt]\nclient_id = ""\n', "[mqtt] client_id must not be empty"),
    ("mqtt = 5\n", "mqtt must be a table"),
])
def test_bad_hub_toml_names_the_setting(tmp_path, text, message):
    path = tmp_path / "hub.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings(path, load_links())
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_forward_and_retention_settings(tmp_path):
    from hub.service.storage.sqlite import DAY, Retention

    path = tmp_path / "hub.toml"
    path.write_text('[[forward]]\nurl = "mqtts://inner:8883"\nca_file = "ca.pem"\n'
                    '[[forward]]\nurl = "postgresql://db/x"\n'
                    '[retention]\nrecords = 0\nminute_counts = "2d"\nevents = "30d"\n[outbox]\nmax_backlog = 5000\n')
    settings = load_settings(path, load_links())
    assert [f["url"] for f in settings.forwards] == ["mqtts://inner:8883", "postgresql://db/x"]
    assert settings.retention == Retention(records=0, minute_counts=2 * DAY, hourly_counts=Retention().hourly_counts,
                                           events=30 * DAY)
    assert settings.max_backlog == 5000



def test_a_bad_forward_url_is_an_input_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from hub.keys.keyfile import KeyFile

    KeyFile.create(tmp_path / "hub.keys")
    linkseal = Path(sys.executable).parent / "linkseal"
    for url, message in (("http://inner:80", "expected mqtt://, mqtts:// or postgresql://"),
                         ("mqtt://user:secret@inner:1883", "not in the URL")):
        result = subprocess.run([str(linkseal), "hub", "run", "--broker", "mqtt://127.0.0.1:1", "--keys",
                                 str(tmp_path / "hub.keys"), "--insecure-plaintext", "--db", str(tmp_path / "h.db"),
                                 "--forward", url], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "secret" not in result.stderr


def test_a_sink_never_gets_the_hubs_own_broker_password(tmp_path, monkeypatch):
    from hub.service.delivery.sinks import open_sink

    monkeypatch.setenv("LINKSEAL_MQTT_PASSWORD", "the device network's password")
    (tmp_path / "inner.password").write_text("inner secret\n")
    sink = open_sink("mqtt://inner:1883", "hub-forward-0", username="linkseal-hub")
    assert sink.publisher.password is None
    sink = open_sink("mqtt://inner:1883", "hub-forward-0", username="linkseal-hub",
                     password_file=tmp_path / "inner.password")
    assert sink.publisher.password == "inner secret"
    assert parse_broker("mqtt://devices:1883", username="hub").password == "the device network's password"
