"""The hub's sans-I/O core: bytes and numbers in, outcomes and counts out; no sockets,
threads, clocks or files (tests/test_layout.py checks the imports).

verifier.py (one outcome per frame), window.py (replay window, loss accounting),
counters.py (the counter slots), report.py (the report schema), status.py (status messages)."""
