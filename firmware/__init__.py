"""The device application and its host-side tooling.

firmware/device/ is what goes onto a board (with the agent core; the one list is
firmware/board_files.py); build.py, flash.py and cli.py (`linkseal firmware`) run on the host.
"""
