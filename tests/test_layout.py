"""The layout holds: imports follow docs/architecture.md, cores stay sans-I/O, only board code
reaches a board, and README's layout table names files that exist."""

import ast
import re
from pathlib import Path

import pytest

from firmware.host.board_files import BOARD_LIBRARIES, agent_modules, board_sources, device_modules

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("agent", "firmware", "hardware", "hub", "relay", "simulator", "linkseal")
# What a sans-I/O core must never touch: sockets, threads, event loops, clocks, processes, databases, MQTT.
IO_MODULES = {"socket", "select", "selectors", "threading", "asyncio", "time", "subprocess", "sqlite3", "paho",
              "psycopg", "http", "urllib"}


def allowed_imports() -> dict:
    """unit -> units it may import, read from the table in docs/architecture.md."""
    rules = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[a-z.]+`", cells[0]):
            rules[cells[0].strip("`")] = set(re.findall(r"`([a-z.]+)`", cells[2]))
    assert rules, "docs/architecture.md has no import table"
    rules["linkseal"] = set(rules) - {"linkseal"}  # "every unit"
    return rules


RULES = allowed_imports()


def unit_of(module: str) -> str | None:
    matches = [unit for unit in RULES if module == unit or module.startswith(unit + ".")]
    return max(matches, key=len) if matches else None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set:
    """Absolute names of everything a file imports, relative imports resolved."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
            found.update([prefix] if node.module else [f"{prefix}.{alias.name}" for alias in node.names])
    return found


def violations(root: Path) -> list:
    """Every import under root's parts that the table does not allow."""
    wrong = []
    for path in sorted(path for part in PARTS for path in (root / part).rglob("*.py")):
        unit = unit_of(module_name(path, root))
        for name in imported_modules(path, root):
            target = unit_of(name)
            if target is not None and target != unit and target not in RULES[unit]:
                wrong.append(f"{path.relative_to(root)} ({unit}) imports {name} ({target})")
    return wrong


def test_the_rule_table_names_every_part_and_only_real_packages():
    assert set(PARTS) <= set(RULES)
    for unit in RULES:
        assert (ROOT / unit.replace(".", "/") / "__init__.py").is_file(), f"{unit}: no such package"


def test_every_import_follows_the_architecture():
    wrong = violations(ROOT)
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(wrong)


def test_the_check_catches_imports_against_the_direction(tmp_path):
    """The imports the issue names as wrong (the hub importing the simulator, the agent core
    importing anything of ours), written into a scratch tree, are all reported."""
    for name, text in {"hub/cli.py": "from simulator.cli import add_sim_group\n",
                       "hub/core/verifier.py": "from ..service import storage\n",
                       "agent/sealer.py": "from hub.keys.keyfile import KeyFile\n",
                       "agent/linux/run.py": "from simulator import run\n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert sorted(violations(tmp_path)) == [
        "agent/linux/run.py (agent.linux) imports simulator (simulator)",
        "agent/sealer.py (agent) imports hub.keys.keyfile (hub.keys)",
        "hub/cli.py (hub) imports simulator.cli (simulator)",
        "hub/core/verifier.py (hub.core) imports hub.service (hub.service)"]


@pytest.mark.parametrize("core", ["agent", "hub/core"])
def test_cores_are_sans_io(core):
    for path in sorted((ROOT / core).glob("*.py")):
        touched = {name.split(".")[0] for name in imported_modules(path)} & IO_MODULES
        assert not touched, f"{path.relative_to(ROOT)} imports {touched}: the core must stay sans-I/O"


def test_board_code_imports_only_board_code_and_micropython_modules():
    board_modules = ({f"agent.{name}" for name in agent_modules(encrypt=True, compact=True) if name != "__init__"} | {"agent"}
                     | set(device_modules()))
    for board_path, source in board_sources(encrypt=True, compact=True).items():
        package = "agent" if board_path.startswith("lib/agent/") else ""
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # inside the agent package on the board
                    names = [f"{package}.{module}" if module else f"{package}.{alias.name}" for alias in node.names]
                else:
                    names = [module]
            else:
                continue
            for name in names:
                assert name in board_modules or name in BOARD_LIBRARIES, \
                    f"{board_path} imports {name}: not board code and not a MicroPython module"


def test_no_cpython_only_module_is_listed_for_a_board():
    cpython_only = {path.relative_to(ROOT) for path in (ROOT / "agent" / "linux").rglob("*.py")}
    cpython_only |= {path.relative_to(ROOT) for path in (ROOT / "firmware" / "host").rglob("*.py")}
    listed = {source.resolve().relative_to(ROOT) for source in board_sources(encrypt=True, compact=True).values()}
    assert listed and not listed & cpython_only
    assert all(path.parts[:2] == ("firmware", "device") or path.parts[0] == "agent" for path in listed)


def test_host_only_code_lives_in_the_host_folders():
    """Under agent/ and firmware/, whatever is not board code sits in agent/linux or firmware/host."""
    listed = {source.resolve() for source in board_sources(encrypt=True, compact=True).values()}
    package_markers = {ROOT / "firmware" / "__init__.py", ROOT / "firmware" / "device" / "__init__.py"}
    stray = [path.relative_to(ROOT) for part in ("agent", "firmware") for path in (ROOT / part).rglob("*.py")
             if path.resolve() not in listed | package_markers
             and path.relative_to(ROOT).parts[:2] not in (("agent", "linux"), ("firmware", "host"))]
    assert not stray, f"host-only code outside agent/linux and firmware/host: {stray}"


@pytest.mark.parametrize("transport", ["mqtt", "lorawan"])
def test_a_build_holds_exactly_the_board_files(tmp_path, transport):
    from firmware.host.build import agent_settings, build, lorawan_settings
    from hardware.board_registry import board
    from hub.keys.keyfile import KeyFile, write_private_json
    from hub.service.config import parse_broker

    keyfile = KeyFile.create(tmp_path / "hub.keys")
    if transport == "mqtt":
        target = board("esp32")
        write_private_json(tmp_path / "d.json", keyfile.provision("d1", "wifi"))
        settings = agent_settings(parse_broker("mqtt://127.0.0.1"), target)
    else:
        target = board("esp32-rak3172")
        config = keyfile.provision("d1", "lora", form="compact", region="EU868")
        write_private_json(tmp_path / "d.json", config)
        settings = lorawan_settings(target, config)
    out = tmp_path / "build"
    build(tmp_path / "d.json", target, out, settings)
    built = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    expected = {name[:-3] + ".mpy" if name.startswith("lib/") else name for name in board_sources(transport, compact=transport == "lorawan")}
    assert built == expected | {"device.json", "agent.json", "epoch", "manifest.py"}
    other = "lib/lorawan.mpy" if transport == "mqtt" else "lib/transport.mpy"
    assert other not in built  # one transport a build: what the device needs
    manifest = (out / "manifest.py").read_text()
    assert "linux" not in manifest and manifest.count("module(") == len(device_modules(transport))


def test_readme_layout_table_names_paths_that_exist():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):]
    paths = [path for row in table.splitlines() if row.startswith("| `")
             for path in re.findall(r"`([^`]+)`", row.split("|")[1])]
    assert len(paths) > 10
    missing = [path for path in paths if not any(ROOT.glob(path.rstrip("/")))]
    assert not missing, f"README's layout table names paths that do not exist: {missing}"
