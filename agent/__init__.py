# linkseal agent core: seals records on the device. Runs on MicroPython and CPython.
from .sealer import Sealer, check_device_id, topic_for  # noqa: F401
