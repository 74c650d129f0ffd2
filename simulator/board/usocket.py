# The old name: micropython-lib's umqtt.simple from PyPI imports usocket.
from socket import *  # noqa: F401,F403
