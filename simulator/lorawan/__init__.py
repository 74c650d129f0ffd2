"""LoRaWAN between devices and the hub, emulated: a RUI3 AT modem (modem.py), the air and a
network server (network.py), and the modem on a serial line for virtual boards (modem_line.py)."""
