"""The device application and its host-side tooling, kept apart:

firmware/device/ goes onto a board (with the agent core); firmware/host/ runs on the host and
never reaches a board: board_files.py (the one list of what goes onto a board), build.py,
flash.py and cli.py (`linkseal firmware`).
"""
