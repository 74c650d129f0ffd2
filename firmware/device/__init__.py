# The device application: these files go onto a board as top-level modules (/lib/epoch.mpy ...),
# listed in firmware/host/board_files.py; this file stays behind. It exists so that CPython can
# import epoch and store as firmware.device.epoch and .store: the Linux agent (agent/linux)
# keeps its boot epoch and queue with the very same code.
