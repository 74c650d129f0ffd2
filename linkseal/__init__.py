"""linkseal: edge integrity for constrained networks. This package is only the `linkseal`
command (a dispatcher); the parts live in agent/, firmware/, hardware/, hub/, simulator/."""

from importlib.metadata import version

__version__ = version("linkseal")  # pyproject.toml is the one place the version is written
