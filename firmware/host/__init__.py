"""Host-side firmware tooling (CPython only, never copied to a board): the list of board files,
`linkseal firmware build` (mpy-cross) and `flash` (mpremote)."""
