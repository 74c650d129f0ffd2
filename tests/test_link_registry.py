"""hardware/links: complete, consistent, cited, and in step with the agent's wire codes."""

import pytest

from agent.link_codes import LINKS
from hardware import link_registry
from hardware.link_registry import RegistryError, load_link, load_links, render_agent_module

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
