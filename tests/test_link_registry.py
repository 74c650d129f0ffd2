"""hardware/links: complete, consistent, cited, and in step with the agent's wire codes."""

import pytest

from agent.link_codes import LINKS
from hardware import link_registry
from hardware.link_registry import LINKS_DIR, RegistryError, load_link, load_links, render_agent_module

REQUIRED = {"fiber", "coax", "twisted-pair", "wifi", "ble", "lora", "cellular", "rs485"}


def test_required_links_with_unique_codes():
    links = load_links()
    assert REQUIRED <= set(links)
    assert len({link.code for link in links.values()}) == len(links)


def test_agent_module_is_generated_from_the_registry():
    assert link_registry.AGENT_MODULE.read_text() == render_agent_module(load_links()), "run `make link-codes`"
    assert {name: code for name, (code, _) in LINKS.items()} == {n: l.code for n, l in load_links().items()}


def test_figures_are_consistent_and_cited():
    for link in load_links().values():
        # The Gilbert-Elliott model's long-run loss stays under the link's normal-loss bound.
        assert link.burst.stationary_loss() <= link.frame_loss, link.name
        assert link.max_payload > 0
        assert {"frame_loss", "burst"} <= set(link.sources), link.name
    links = load_links()
    assert links["fiber"].ber == 1e-12 and links["twisted-pair"].ber == 1e-8
    assert links["ble"].ber == 1e-3
    # A fibre run losing 1% is far outside its kind; WiFi at 1% is not.
    assert links["fiber"].frame_loss < 0.01 < links["wifi"].frame_loss


@pytest.mark.parametrize("text,message", [
    ('name = "wrong"\ncode = 1\nmtu = 1500\n', "must match the file name"),
    ('name = "bad"\ncode = 0\nmtu = 1500\n', "code must be"),
    ('name = "bad"\ncode = 9\nmtu = 20\n', "mtu must be"),
    ('name = "bad"\ncode = 9\nmtu = 1500\n[expected]\nframe_loss = 2.0\n', "frame_loss must be"),
    ('name = "bad"\ncode = 9\nmtu = 1500\n[expected\n', "bad.toml"),
])
def test_bad_link_files_are_named_in_the_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RegistryError, match=message):
        load_link(path)


def test_reused_code_is_refused(tmp_path):
    for name in ("one", "two"):
        source = (link_registry.LINKS_DIR / "wifi.toml").read_text().replace('name = "wifi"', f'name = "{name}"')
        (tmp_path / f"{name}.toml").write_text(source)
    with pytest.raises(RegistryError, match="already used"):
        load_links(tmp_path)


def test_lora_airtime_follows_semtech_an1200_13():
    """Time on air of LoRaWAN uplinks (13 bytes of LoRaWAN around the payload), as Semtech's
    formula gives it and the usual calculators print it: 51 bytes at SF7 and SF12 (125 kHz,
    low data rate optimisation from SF11), 11 bytes at SF10 (US915 DR0, under its 400 ms)."""
    from hardware.link_registry import lora_airtime_s

    assert round(lora_airtime_s(51, 7) * 1000, 1) == 118.0
    assert round(lora_airtime_s(51, 12) * 1000, 1) == 2793.5
    assert round(lora_airtime_s(11, 10) * 1000, 1) == 370.7
    assert lora_airtime_s(0, 7) <= lora_airtime_s(1, 7) < lora_airtime_s(51, 7) < lora_airtime_s(51, 8)
    lora = load_links()["lora"]
    assert lora.duty_cycle == {"EU868": 0.01, "US915": 0.0} and lora.ports == (10, 11)
    assert set(lora.data_rates["EU868"]) == set(lora.payload_limits["EU868"])
    assert lora.data_rates["US915"]["DR4"] == (8, 500)


def test_bad_radio_tables_are_refused(tmp_path):
    source = (LINKS_DIR / "lora.toml").read_text()
    for broken, words in [(source.replace("DR5 = [7, 125]", "DR5 = [13, 125]"), "data_rates"),
                          (source.replace("EU868 = 0.01", "EU868 = 2"), "duty_cycle"),
                          (source.replace("status_port = 11", "status_port = 10"), "record_port and status_port")]:
        (tmp_path / "lora.toml").write_text(broken)
        with pytest.raises(RegistryError, match=words):
            load_link(tmp_path / "lora.toml")
