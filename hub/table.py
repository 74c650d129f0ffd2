"""The report as tables for a terminal (rich); fits 80 columns."""

from collections import Counter

from rich import box
from rich.console import Console
from rich.table import Table

# `valid` is left out to fit 80 columns: it is recv minus the other outcomes (and in --json).
_COLUMNS = (("received", "recv"), ("lost", "lost"), ("loss_rate", "loss%"),
            ("duplicate", "dup"), ("reordered", "reord"), ("corrupt", "corr"), ("corrupt_rate", "corr%"),
            ("forged", "forg"), ("replay", "repl"), ("malformed", "malf"))


DEVICE_EVENTS = ("birth", "death")
WATCH_EVENTS = ("silent", "back", "behaviour_alarm", "behaviour_clear")  # docs/behaviour.md


def _cell(entry: dict, key: str) -> str:
    value = entry[key]
    if key.endswith("_rate"):
        return f"{value * 100:.2f}" if value else "0"
    return str(value)


def link_table(report: dict, title: str = "Per link") -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False)
    table.add_column("link", no_wrap=True, min_width=12)
    for _, header in _COLUMNS:
        table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    for name, entry in sorted(report["links"].items()):
        table.add_row(name, *(_cell(entry, key) for key, _ in _COLUMNS))
    return table


def radio_table(report: dict) -> Table | None:
    """Links with radio figures (LoRaWAN): where records were lost, and each gateway's share."""
    rows = [(name, link["radio"]) for name, link in sorted(report["links"].items()) if link.get("radio")]
    if not rows:
        return None
    table = Table(title="Radio (LoRaWAN)", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True,
                  show_edge=False)
    for header in ("link", "uplinks", "lost after sending", "never sent", "gateways: share, SNR median"):
        table.add_column(header, justify="left" if header in ("link", "gateways: share, SNR median") else "right")
    for name, radio in rows:
        gateways = ", ".join(f"{g} {100 * v['share']:.0f}% {v['snr_median']} dB" for g, v in radio["gateways"].items())
        table.add_row(name, str(radio["uplinks"]), str(radio["lost_after_transmission"]),
                      str(radio["lost_before_transmission"]), gateways)
    return table


def print_report(report: dict, console: Console | None = None, devices: bool = False) -> None:
    console = console or Console(width=80)
    if not report["links"] and not report["unknown_device"]:
        console.print("No frames: the report is empty.")
        return
    console.print(link_table(report))
    console.print("recv: frames received; dup: duplicates; reord: reordered; corr: corrupt (the link damaged them); "
                  "forg: forged (intact but not authentic); repl: replays; malf: malformed.", highlight=False)
    if devices:
        table = Table(title="Per device", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False)
        for header in ("device", "link", "recv", "lost", "loss%", "corr", "forged", "replay", "drops", "state"):
            table.add_column(header, justify="left" if header in ("device", "link", "state") else "right")
        for device, entry in sorted(report["devices"].items()):
            table.add_row(device, entry["link"], *(_cell(entry, k) for k in
                          ("received", "lost", "loss_rate", "corrupt", "forged", "replay", "source_drops")),
                          entry["liveness"] or "-")
        console.print(table)
    radio = radio_table(report)
    if radio is not None:
        console.print(radio)
    # Births and deaths (status messages) are kept apart, so they never crowd out an attack.
    # One pass over the events, keeping only the first few: they may be spooled on disk.
    kinds, lifecycle, watched, first = Counter(), Counter(), Counter(), []
    for event in report["events"]:
        if event["kind"] in DEVICE_EVENTS:
            lifecycle[event["kind"]] += 1
            continue
        if event["kind"] in WATCH_EVENTS:
            watched[event["kind"]] += 1
            continue
        kinds[event["kind"]] += 1
        if len(first) < 5:
            first.append(event)
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "none"
    console.print(f"Frames from unknown devices: {report['unknown_device']} (every frame is counted; events are "
                  "sampled: at most 10 of a kind are listed per minute).")
    console.print(f"Security events: {summary}.")
    for event in first:
        console.print(f"  {event['kind']:<14} {event['device']} on {event['link'] or 'no link'}: {event['reason']}",
                      markup=False, highlight=False, no_wrap=True, overflow="ellipsis")
    if sum(kinds.values()) > 5:
        console.print(f"  ... and {sum(kinds.values()) - 5} more (--json lists them all)")
    if lifecycle:
        console.print("Device status: " + ", ".join(f"{lifecycle[k]} {k}s" for k in DEVICE_EVENTS if lifecycle[k])
                      + " (status messages).")
    silent = {name: link["silent_devices"] for name, link in sorted(report["links"].items())
              if link.get("silent_devices")}
    if watched or silent:
        console.print("Watch: " + (", ".join(f"{watched[k]} {k}" for k in WATCH_EVENTS if watched[k]) or "no events")
                      + "; silent now: " + (", ".join(f"{n} on {name}" for name, n in silent.items()) or "none")
                      + " (docs/behaviour.md).", highlight=False)
