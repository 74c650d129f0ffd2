"""`make bench`: every benchmark, one JSON object per figure on stdout.

Figures are ratios against a baseline measured in the same run where speed is concerned;
absolute rates are printed alongside for context only.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (  # noqa: E402
    bench_console,
    bench_faults,
    bench_firmware,
    bench_forward,
    bench_ingest,
    bench_lorawan,
    bench_loss_model,
    bench_memory,
    bench_micropython,
    bench_overhead,
    bench_relay,
    bench_restart_backlog,
    bench_scaleout,
    bench_seals,
    bench_verify,
    bench_watch,
)

if __name__ == "__main__":
    for module in (bench_overhead, bench_verify, bench_memory, bench_micropython, bench_ingest, bench_seals,
                   bench_forward, bench_restart_backlog, bench_lorawan,
                   bench_relay, bench_scaleout, bench_console, bench_faults, bench_loss_model, bench_firmware, bench_watch):
        module.main()
