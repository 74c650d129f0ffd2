"""The agent on Linux devices (CPython only, never copied to a board): `linkseal agent seal`
and `linkseal agent run`, with paho-mqtt and a state directory in place of flash."""
