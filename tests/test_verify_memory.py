"""`hub verify` in bounded memory: a capture of a million frames, a hundred thousand of them
forged (each one a security event), verified with a peak RSS under a fixed bound that does
not grow with the capture."""

import base64
import json
import random
import subprocess
import time

from agent import Sealer, topic_for
from agent import frame as wire
from hub.keys.keyfile import KeyFile
from tools.services import LINKSEAL

FRAMES = 1_000_000
FORGED_EVERY = 10  # 100,000 forged frames
DEVICES = 200
RSS_BOUND_MB = 80  # measured: 46 MB, nearly all of it the interpreter and its imports (600 MB before)


def write_capture(path, keyfile):
    rng = random.Random(1)
    sealers = [Sealer(d, bytes.fromhex(keyfile.provision(d, "wifi", save=False)["key"]), link="wifi", epoch=1)
               for d in (f"dev-{i}" for i in range(DEVICES))]
    keyfile.save()
    topics = [topic_for(s.device_id) for s in sealers]
    with open(path, "w") as out:
        for i in range(FRAMES):
            device = i % DEVICES
            frame = sealers[device].seal(b"reading %d" % i)
            if i % FORGED_EVERY == 0:  # a well-formed frame with a random tag: forged, an event each
                _, _, _, _, _, _, tag_at, tag_len = wire.decode(frame)
                body = frame[:tag_at] + rng.randbytes(tag_len)
                frame = body + wire.crc_trailer(body)
            # One frame a second: few enough per minute that every forged one is an event.
            out.write(f'{{"t": {1.8e9 + i}, "topic": "{topics[device]}", '
                      f'"payload_b64": "{base64.b64encode(frame).decode()}"}}\n')


def high_water_mb(pid) -> float:
    """The process's peak RSS (VmHWM) so far. Not ru_maxrss: on Linux that includes the RSS of
    the forked test runner from before exec, which grows over a whole test session."""
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # it has just exited
        return 0.0
    return int(line.split()[1]) / 1024


def test_verify_of_a_million_frames_stays_in_bounded_memory(tmp_path):
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    capture = tmp_path / "capture.jsonl"
    write_capture(capture, keyfile)
    # Each device sends every 200 s and announces no heartbeat: with the 30 s assumed, the watch
    # would (rightly) call each silent between its frames, two million events this test is not about.
    config = tmp_path / "hub.toml"
    config.write_text("[watch.heartbeat_s]\ndefault = 3600\n")
    with open(tmp_path / "report.json", "w") as out:
        process = subprocess.Popen([str(LINKSEAL), "hub", "verify", str(capture), "--keys", str(keyfile.path),
                                    "--insecure-plaintext", "--json", "--config", str(config)], stdout=out,
                                   stderr=subprocess.PIPE)
        peak_mb = 0.0
        while process.poll() is None:  # sampling the high-water mark, not waiting on it
            peak_mb = max(peak_mb, high_water_mb(process.pid))
            time.sleep(0.05)
    assert process.returncode == 0, process.stderr.read()
    report = json.loads((tmp_path / "report.json").read_text())
    wifi = report["links"]["wifi"]
    assert (wifi["received"], wifi["forged"], wifi["valid"]) == (FRAMES, FRAMES // FORGED_EVERY,
                                                                 FRAMES - FRAMES // FORGED_EVERY)
    assert sum(e["kind"] == "forged" for e in report["events"]) == FRAMES // FORGED_EVERY
    assert not [e for e in report["events"] if e["kind"] == "silent"]
    assert peak_mb < RSS_BOUND_MB, f"hub verify peaked at {peak_mb:.0f} MB"
