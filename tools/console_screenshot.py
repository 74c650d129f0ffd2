"""docs/console.png: the console's Links page over the demo's database, in Debian's chromium.

    linkseal demo --out /tmp/demo && python -m tools.console_screenshot /tmp/demo/hub.db docs/console.png
"""

import shutil
import sys

from playwright.sync_api import sync_playwright

from hub.service.console.server import ConsoleServer


def main(db: str, out: str, page_hash: str = "#links") -> None:
    server = ConsoleServer(db, "127.0.0.1", 0).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                                 args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 520})
            page.goto(f"http://{server.address}/{page_hash}")
            page.wait_for_selector("tr[data-link]")
            page.screenshot(path=out, full_page=True)
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
