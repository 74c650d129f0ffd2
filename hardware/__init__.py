"""The hardware registry, as data: links/*.toml (link types) and boards/*.toml (boards),
shipped inside the package and read through importlib.resources by link_registry.py and
board_registry.py."""

from importlib import resources
from pathlib import Path


def data_dir(name: str) -> Path:
    """hardware/<name>/ wherever the package is installed (a wheel installs to a plain directory)."""
    return Path(str(resources.files(__name__) / name))
