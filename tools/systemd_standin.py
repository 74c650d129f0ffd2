"""What `systemctl` and `journalctl` do for docs/deploy-bastion.md, where no systemd runs (a
container, a test): tests/test_deploy.py runs the guide's commands in order with these as the
shell's `systemctl` and `journalctl`.

- `systemctl restart mosquitto`: Mosquitto with $MOSQUITTO_CONF, in the background (started
  as root it switches to its own user, as the Debian service does);
- `systemctl enable --now linkseal-hub`: the unit's ExecStart by hand, as systemd would run
  it: each LoadCredential= file copied into a credentials directory that %d names,
  Environment= set, StateDirectory= created; output to $STANDIN_ROOT/linkseal-hub.log;
- `systemctl restart linkseal-hub`: SIGTERM, wait for it to exit, and start it again (the
  credentials copied anew, as systemd does);
- `systemctl daemon-reload`: nothing to do; `journalctl -u linkseal-hub ...`: the hub's log.

It does not confine the process (no dynamic user, no file-system protection): that part of
the unit is checked by `systemd-analyze` in tests/test_deploy.py.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("STANDIN_ROOT", "."))
UNIT_DIR = Path(os.environ.get("UNIT_DIR", "/etc/systemd/system"))


def directives(unit: Path) -> list:
    text = unit.read_text().replace("\\\n", " ")
    return [(m[1], m[2].strip()) for m in (re.match(r"^(\w+)=(.*)$", line.strip()) for line in text.splitlines()) if m]


def start_unit(name: str) -> None:
    unit = UNIT_DIR / f"{name}.service"
    credentials = ROOT / "run" / "credentials" / f"{name}.service"
    credentials.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    command = None
    for key, value in directives(unit):
        if key == "LoadCredential":
            credential, source = value.split(":", 1)
            shutil.copyfile(source, credentials / credential)
            (credentials / credential).chmod(0o400)
        elif key == "Environment":
            variable, _, setting = value.partition("=")
            env[variable] = setting.replace("%d", str(credentials))
        elif key == "ExecStart":
            command = shlex.split(value.replace("%d", str(credentials)))
    log = open(ROOT / f"{name}.log", "ab")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    (ROOT / f"{name}.pid").write_text(str(process.pid))


def stop_unit(name: str) -> None:
    pid = int((ROOT / f"{name}.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30  # the unit's TimeoutStopSec
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # not our child here; /proc tells when it is gone
        except ChildProcessError:
            pass
        time.sleep(0.1)


def main(argv) -> None:
    if argv[0] == "journalctl":
        sys.stdout.write((ROOT / "linkseal-hub.log").read_text())
        return
    verb, names = argv[1], [a for a in argv[2:] if not a.startswith("-")]
    if verb == "daemon-reload":
        return
    if verb == "restart" and names == ["mosquitto"]:
        subprocess.run(["mosquitto", "-c", os.environ["MOSQUITTO_CONF"], "-d"], check=True)
    elif verb == "restart":
        for name in names:
            stop_unit(name)
            start_unit(name)
    elif verb == "enable" and "--now" in argv:
        for name in names:
            start_unit(name)
    else:
        sys.exit(f"systemd stand-in: `systemctl {' '.join(argv[1:])}` is not something the guide should need")


if __name__ == "__main__":
    main(sys.argv[1:])
