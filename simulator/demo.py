"""`linkseal demo`: devices on every link type, faults and attacks, verified by the hub core."""

from rich.console import Console

from hub.link_registry import links_by_code
from hub.report import build_report
from hub.table import print_report
from hub.verifier import Verifier

from . import scenario
from .truth import mismatches


def run(seed: int = 1, frames: int = 2000, stress: float = 1.0, console: Console | None = None) -> int:
    console = console or Console(width=80)
    with console.status("sealing and sending frames over simulated links..."):
        traffic = scenario.build(seed=seed, frames=frames, stress=stress)
    verifier = Verifier(traffic.devices, {code: link.name for code, link in links_by_code().items()})
    wrong_outcomes = 0
    for t, topic, data, expected in traffic.messages:
        if verifier.verify(topic, data, t).outcome != expected:
            wrong_outcomes += 1
    report = build_report(verifier)
    console.print(f"{len(traffic.devices)} devices on {len(report['links'])} link types, "
                  f"{len(traffic.messages)} messages (seed {seed}, stress x{stress:g}).")
    print_report(report, console)
    problems = mismatches(traffic.ledger.report(), report)
    if wrong_outcomes or problems:
        console.print(f"[red]Ground truth check FAILED: {wrong_outcomes} frames got the wrong outcome.[/red]")
        for problem in problems[:20]:
            console.print(f"  {problem}")
        return 1
    console.print(f"[green]Ground truth check: all {len(traffic.messages)} outcomes and every counter match.[/green]")
    return 0
