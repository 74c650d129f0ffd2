"""Injected versus measured: the hub's report held against the simulator's ground truth."""

from rich import box
from rich.console import Console
from rich.table import Table

from .attacks import KINDS
from .trace import Attack
from .truth import mismatches


def _rate(num, den):
    return num / den if den else 0.0


def compare(generated, truth: dict, hub: dict, labelled: list, outcomes: list | None = None) -> dict:
    """Per link: configured, realised and measured rates; per attack class: injected and detected.

    configured: the fault model's long-run rate (for loss: not received intact, so damaged frames
    count too, as the hub counts them); realised: what this run's ground truth shows;
    measured: the hub's figure and its 95% interval. `inside` says whether the configured rate
    lies in the hub's interval.
    """
    links = {}
    frames_by_link = {}
    for event in generated.events:
        if not isinstance(event, Attack):
            frames_by_link.setdefault(event.link, []).append(len(event.frame))
    models = {model.name: model for model in generated.models.values()}
    for link in sorted(frames_by_link):
        model = models[link]
        sizes = frames_by_link[link]
        t, h = truth["links"].get(link), hub["links"].get(link)
        if t is None or h is None:
            continue
        configured_corrupt = model.expected_corruption(sum(sizes) / len(sizes))
        # The hub counts a sequence number lost when no copy arrived intact: lost on the link,
        # or delivered damaged (every copy carries the same damage in these models).
        configured_loss = 1 - (1 - model.expected_loss) * (1 - configured_corrupt)
        links[link] = {
            "frames_sent": len(sizes),
            "loss": {"configured": configured_loss, "realised": _rate(t["lost"], t["valid"] + t["lost"]),
                     "measured": h["loss_rate"], "ci": h["loss_rate_ci"],
                     "inside": h["loss_rate_ci"][0] <= configured_loss <= h["loss_rate_ci"][1]},
            "corruption": {"configured": configured_corrupt, "realised": _rate(t["corrupt"], t["received"]),
                           "measured": h["corrupt_rate"], "ci": h["corrupt_rate_ci"],
                           "inside": h["corrupt_rate_ci"][0] <= configured_corrupt <= h["corrupt_rate_ci"][1]},
            "duplicate": {"truth": t["duplicate"], "measured": h["duplicate"]},
            "reordered": {"truth": t["reordered"], "measured": h["reordered"]},
            "gilbert_elliott": {"configured_p": getattr(model.loss, "p", None),
                                "configured_r": getattr(model.loss, "r", None),
                                "measured_p": h["ge_p"], "measured_r": h["ge_r"]},
        }
    problems = mismatches(truth, hub)
    result = {"links": links, "counters_match_truth": problems == [], "counter_mismatches": problems[:50]}
    if outcomes is not None:
        injected = {kind: 0 for kind in KINDS}
        detected = {kind: 0 for kind in KINDS}
        accepted = 0
        noise_as_attack = 0
        for (_, _, _, index, expected), got in zip(labelled, outcomes):
            event = generated.events[index]
            if isinstance(event, Attack):
                injected[event.attack] += 1
                detected[event.attack] += got == expected
                accepted += got == "valid"
            elif expected == "corrupt" and got in ("forged", "replay", "unknown_device"):
                noise_as_attack += 1
        result["attacks"] = {kind: {"injected": injected[kind], "detected": detected[kind]} for kind in KINDS}
        result["attacks_accepted"] = accepted
        result["noise_reported_as_attack"] = noise_as_attack
        result["outcomes_match_truth"] = all(got == exp for (*_, exp), got in zip(labelled, outcomes))
    return result


def _pct(value):
    return f"{value * 100:.2f}"


def print_comparison(comparison: dict, console: Console | None = None) -> None:
    console = console or Console(width=80)
    table = Table(title="Injected vs measured, per link (loss and corruption in %)", box=box.SIMPLE_HEAD,
                  padding=(0, 1), collapse_padding=True, show_edge=False)
    for header in ("link", "cfg", "real", "hub", "hub 95% CI", "corr", "hub", "dup", "reord"):
        table.add_column(header, justify="left" if header == "link" else "right", no_wrap=True)
    for link, row in comparison["links"].items():
        loss, corr = row["loss"], row["corruption"]
        interval = f"{loss['ci'][0] * 100:.1f}-{loss['ci'][1] * 100:.1f}" + ("" if loss["inside"] else "*")
        table.add_row(link, _pct(loss["configured"]), _pct(loss["realised"]), _pct(loss["measured"]), interval,
                      _pct(corr["realised"]), _pct(corr["measured"]),
                      f"{row['duplicate']['measured']}/{row['duplicate']['truth']}",
                      f"{row['reordered']['measured']}/{row['reordered']['truth']}")
    console.print(table)
    starred = any(not row["loss"]["inside"] for row in comparison["links"].values())
    console.print("cfg: the model's rate; real: this run's ground truth; hub: what the hub measured; corr: "
                  "corruption; dup, reord: duplicates and reordered frames, hub/truth."
                  + ("\n* configured loss outside the hub's interval (expect about 1 link in 20)." if starred else ""),
                  highlight=False)
    if "attacks" in comparison:
        attack_table = Table(title="Attacks", box=box.SIMPLE_HEAD, show_edge=False)
        for header in ("attack", "injected", "detected as its class"):
            attack_table.add_column(header, justify="left" if header == "attack" else "right")
        for kind, row in comparison["attacks"].items():
            attack_table.add_row(kind, str(row["injected"]), str(row["detected"]))
        console.print(attack_table)
        console.print(f"Attacks accepted: {comparison['attacks_accepted']}. "
                      f"Link faults reported as attacks: {comparison['noise_reported_as_attack']}. "
                      f"Every counter matches the ground truth: {comparison['counters_match_truth']}.",
                      highlight=False)


def plot(comparison: dict, directory) -> list:
    """One PNG per link type: configured, realised and measured rates with the hub's interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for link, row in comparison["links"].items():
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for x, key in enumerate(("loss", "corruption")):
            item = row[key]
            ax.errorbar([x + 0.1], [item["measured"] * 100],
                        yerr=[[100 * max(0.0, item["measured"] - item["ci"][0])],
                              [100 * max(0.0, item["ci"][1] - item["measured"])]],
                        fmt="o", color="tab:blue", capsize=6, label="hub, 95% interval" if x == 0 else None)
            ax.plot([x - 0.1], [item["configured"] * 100], "s", color="tab:orange",
                    label="configured" if x == 0 else None)
            ax.plot([x], [item["realised"] * 100], "x", color="black", label="realised" if x == 0 else None)
        ax.set_xticks([0, 1], ["loss", "corruption"])
        ax.set_ylabel("%")
        ax.set_title(f"{link}: injected vs measured ({row['frames_sent']} frames)")
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        path = directory / f"{link}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
