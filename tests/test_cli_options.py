"""Every numeric option of every command, walked with extreme values: each is refused with
exit status 2 and one line naming the option, never a traceback or a silent default.

Options whose type is a number are found by walking the parser, so a new option is covered
as soon as it exists (and must use a checked type: a bare int or float is refused here).
Options that carry numbers inside a string (URLs, HOST:PORT, durations, KEY=VALUE) are
listed by hand below, with a command line that reaches their check."""

import argparse
import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest

from hub.cli_common import Number, duration, host_port
from linkseal.cli import build_parser, main

HUGE = "9" * 30
NON_NUMERIC = ("abc", "", "0x", "1,5")
FLOAT_EXTREMES = ("nan", "inf", "-inf", "1e999")


def leaf_commands(parser, path=()):
    """(command path, parser) for every runnable command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_commands(sub, path + (name,))


def numeric_options():
    for path, parser in leaf_commands(build_parser()):
        for action in parser._actions:
            if action.option_strings and (isinstance(action.type, Number) or action.type in (int, float)):
                yield pytest.param(path, action, id=" ".join(path) + " " + action.option_strings[0])


def run(argv):
    """main() in this process: (exit status, stderr); a traceback fails the test by itself."""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def assert_refused(argv, option):
    code, err = run(argv)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, (argv, code, err)
    assert len(errors) == 1 and option in errors[0], (argv, err)
    assert "Traceback" not in err


def extremes(number: Number) -> list:
    """Values outside the option's range or not numbers at all."""
    values = [HUGE, str(number.high + 1), *NON_NUMERIC]
    if number.kind is float:
        values += FLOAT_EXTREMES
    else:
        values += ["1.5", "1e3"]
    if number.low >= 0:
        values.append("-1")
    if number.low > 0:
        values.append("0")
    return values


@pytest.mark.parametrize("path, action", list(numeric_options()))
def test_numeric_option_refuses_extremes(path, action):
    option = action.option_strings[0]
    if action.type in (int, float):  # only with a fixed set of choices is a bare int checked enough
        assert action.choices, f"{' '.join(path)} {option}: use hub.cli_common.Number, not a bare {action.type}"
        values = [HUGE, "-1", "abc", "nan", str(max(action.choices) + 1)]
    else:
        values = extremes(action.type)
    for value in values:
        assert_refused([*path, f"{option}={value}"], option)


def test_every_numeric_option_was_found():
    """The walk sees the options it should (a guard against a walk that finds nothing)."""
    found = {" ".join(p.values[0]) + " " + p.values[1].option_strings[0] for p in numeric_options()}
    assert {"keys provision --key-id", "hub broker-config --port", "sim run --devices", "sim run --rate",
            "sim proxy --seed", "agent run --heartbeat", "agent seal --epoch", "firmware build --record-interval",
            "demo --seed"} <= found
    assert len(found) >= 20


@pytest.fixture
def files(tmp_path):
    """A plaintext key file with one device and its config: enough for commands to reach their checks."""
    from hub.keys.keyfile import KeyFile

    keyfile = KeyFile.create(tmp_path / "hub.keys")
    config = keyfile.provision("pump-1", "wifi")
    (tmp_path / "pump-1.json").write_text(json.dumps(config))
    (tmp_path / "pump-1.json").chmod(0o600)  # it holds a key: the agent refuses it otherwise
    return tmp_path


STRING_NUMBERS = [  # (option, argv with {v} for the value, {d} for the test's directory, extreme values)
    ("--broker", "hub run --broker mqtt://127.0.0.1:{v} --keys {d}/hub.keys --insecure-plaintext --db {d}/h.db",
     [HUGE, "65536", "-1", "0", "abc"]),
    ("--metrics", "hub run --broker mqtt://127.0.0.1:1 --keys {d}/hub.keys --insecure-plaintext --db {d}/h.db "
     "--metrics 127.0.0.1:{v}", [HUGE, "65536", "-1", "abc", ""]),
    ("--forward", "hub run --broker mqtt://127.0.0.1:1 --keys {d}/hub.keys --insecure-plaintext --db {d}/h.db "
     "--forward mqtt://127.0.0.1:{v}", [HUGE, "65536", "-1", "0", "abc"]),
    ("--since", "hub report --db {d}/h.db --since {v}", [HUGE + "d", "-1d", "abc", "1e999d", "nan"]),
    ("--grace", "keys rotate pump-1 --keys {d}/hub.keys --insecure-plaintext --out {d}/new.json --grace {v}",
     [HUGE + "d", "99999999999999999d", "-1d", "abc", "inf"]),
    ("--broker", "agent run --config {d}/pump-1.json --broker mqtt://127.0.0.1:{v}", [HUGE, "65536", "-1", "0"]),
    ("--broker", "firmware build --device {d}/pump-1.json --board esp32 --out {d}/build "
     "--broker mqtt://127.0.0.1:{v}", [HUGE, "65536", "-1", "0", "abc"]),
    ("--broker", "sim run --devices 1 --duration 1 --out {d}/sim --broker mqtt://127.0.0.1:{v}",
     [HUGE, "65536", "-1", "0", "abc"]),
    ("--listen", "sim proxy --listen 127.0.0.1:{v} --upstream 127.0.0.1:1883 --profile wifi",
     [HUGE, "65536", "-1", "abc"]),
    ("--upstream", "sim proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:{v} --profile wifi",
     [HUGE, "65536", "-1", "abc"]),
    ("--outage", "sim proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:1883 --profile wifi --outage {v}",
     [f"{HUGE}:1", "1:" + HUGE, "-1:5", "5:0", "5:-1", "nan:5", "5:inf", "abc"]),
    ("--set", "sim proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:1883 --profile wifi --set {v}",
     ["loss_rate=" + HUGE, "loss_rate=-1", "loss_rate=nan", "loss_rate=1e999", "delay_ms=-1", "loss_rate=abc",
      "burst_bits=0"]),
    ("--set", "sim run --devices 1 --duration 1 --no-broker --out {d}/sim --set {v}",
     ["wifi.loss_rate=" + HUGE, "wifi.p=-1", "wifi.r=nan", "wifi.duplicate=inf", "wifi.jitter_ms=1e999",
      "wifi.loss_rate=abc"]),
]


@pytest.mark.parametrize("option, template, values", STRING_NUMBERS,
                         ids=[f"{t.split(' --')[0]} {o}" for o, t, _ in STRING_NUMBERS])
def test_numbers_inside_strings_refuse_extremes(files, option, template, values):
    for value in values:
        argv = template.replace("{d}", str(files)).split()
        argv = [part.replace("{v}", value) for part in argv]
        assert_refused(argv, option)


def test_the_checked_types_accept_their_ranges():
    """The other half: the checks refuse only what is out of range."""
    assert Number(int, 0, 255)("255") == 255 and Number(float, 0, 1)("0.5") == 0.5
    assert duration("15m") == 900 and host_port(":0") == ("", 0) and host_port("127.0.0.1:9108")[1] == 9108
    code, err = run(["sim", "run", "--devices", "2", "--duration", "2", "--no-broker", "--seed", "4294967295",
                     "--set", "wifi.loss_rate=0.5", "--out", "/dev/null/never"])
    assert "--seed" not in err and "--set" not in err


def test_a_bug_is_not_called_an_input_error(tmp_path, monkeypatch):
    """Only input errors exit 2; a bug (here a ValueError deep inside a command) exits 1 with one
    line that says so, and --debug shows its traceback."""
    from hub.service.storage.sqlite import SQLiteReader, SQLiteStorage

    SQLiteStorage(tmp_path / "hub.db").close()
    monkeypatch.setattr(SQLiteReader, "audit", lambda self: int("a bug"))
    code, err = run(["hub", "audit", "--db", str(tmp_path / "hub.db")])
    assert code == 1, err
    assert err.startswith("linkseal: internal error: ValueError") and "--debug" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ValueError, match="a bug"):
        main(["--debug", "hub", "audit", "--db", str(tmp_path / "hub.db")])


@pytest.mark.parametrize("line, message", [
    ('{"t": 1e999, "topic": "linkseal/v1/a/rec", "payload_b64": ""}', "finite number of seconds"),
    ('{"t": NaN, "topic": "linkseal/v1/a/rec", "payload_b64": ""}', "finite number of seconds"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_capture_lines_that_are_not_times_or_are_too_deep_are_input_errors(tmp_path, line, message):
    from hub.keys.keyfile import KeyFile

    KeyFile.create(tmp_path / "hub.keys")
    capture = tmp_path / "capture.jsonl"
    capture.write_text(line + "\n")
    code, err = run(["hub", "verify", str(capture), "--keys", str(tmp_path / "hub.keys"), "--insecure-plaintext"])
    assert code == 2 and message in err and f"{capture}:1" in err and "Traceback" not in err, err


def test_a_file_that_is_no_key_file_is_called_so(tmp_path):
    code, err = run(["keys", "list", "--keys", "/etc/passwd", "--insecure-plaintext"])
    assert code == 2 and "not a key file" in err and "chmod" not in err, err


def test_a_negative_attack_count_is_refused():
    code, err = run(["sim", "run", "--no-broker", "--duration", "5", "--attacks", "tamper=-1"])
    assert code == 2 and "--attacks 'tamper=-1'" in err, err


def test_a_garbage_pruning_anchor_is_reported_broken_not_a_crash(tmp_path):
    import sqlite3

    from hub.service.storage.sqlite import SQLiteStorage

    SQLiteStorage(tmp_path / "hub.db").close()
    db = sqlite3.connect(tmp_path / "hub.db")
    db.execute("INSERT INTO meta VALUES ('events_anchor', 'garbage')")
    db.commit()
    db.close()
    import subprocess

    from tools.services import LINKSEAL

    result = subprocess.run([str(LINKSEAL), "hub", "audit", "--db", str(tmp_path / "hub.db")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "not one the hub writes" in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
