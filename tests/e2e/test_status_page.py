"""The status page (DESIGN 3.7) in a real headless Chromium against the service as a process.

Chromium is Debian's package (``make setup`` installs it); Python ``playwright`` drives it through
``executable_path`` (``playwright install`` is never used). Under ``CI=true`` a missing chromium
fails the test. The screenshot lands in ``out/status.png`` (ignored by git).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

from adapters.oscp.simulator import GridOperatorSimulator
from tests.e2e.service import ServiceProcess
from tests.e2e.test_service import CONFIG, TOKEN, blocks, fleet, until
from tests.servers import require_binary

OUT = Path(__file__).resolve().parents[2] / "out"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


async def page_rows(page: Page) -> dict[str, dict[str, str]]:
    """Each charger row of the page as {column: text}."""
    rows: dict[str, dict[str, str]] = await page.eval_on_selector_all(
        "tr[data-charger]",
        """rows => Object.fromEntries(rows.map(r => [r.dataset.charger, Object.fromEntries(
               [...r.cells].map(c => [c.dataset.col, c.textContent])
           )]))""")
    return rows


def reason_shown(charger: dict[str, Any], text: str) -> bool:
    """The reason cell shows the API's ``limit_reason`` code first (then node and phase); every
    charger has one (DESIGN 3.6)."""
    reason = charger["limit_reason"]
    return bool(reason["code"]) and text.split(" ")[0] == reason["code"] and (
        not reason["node"] or reason["node"] in text)


async def test_status_page_shows_limits_and_follows_a_forecast_change(tmp_path: Path) -> None:
    chromium = require_binary("chromium")
    service = ServiceProcess(tmp_path, CONFIG).start()
    cp = GridOperatorSimulator(fp_url=f"{service.url}/oscp/fp/2.0", fp_token="oscp-token")
    await cp.start()
    chargers = fleet(service.ocpp_url)
    for c in chargers:
        c.start()
    try:
        # The page and its files need no token.
        status, html = service.request("GET", "/")
        assert status == 200 and "<script src=\"/status/app.js\">" in html
        assert service.request("GET", "/status/app.js")[0] == 200
        assert await cp.send_forecast("depot", blocks(41.4)) == 204  # 60 A per phase
        await until(lambda: all(c.transaction_id for c in chargers))

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 720})
            await page.goto(service.url + "/")
            # With a token configured the page asks for it once and keeps it for the tab.
            await page.wait_for_selector("#login:not([hidden])")
            await page.fill("#token", TOKEN)
            await page.click("#login button")
            await page.wait_for_selector("tr[data-charger='CP3']")
            assert await page.evaluate("sessionStorage.getItem('balancer.admin_token')") == TOKEN

            async def matches_api(capacity_a: float) -> bool:
                site = service.get("/api/v1/sites/depot", TOKEN)
                rows = await page_rows(page)
                shown = await page.text_content("tr[data-phase='L1'] td.capacity")
                return (site["capacity_a"][0] == capacity_a and shown == f"{capacity_a:.1f}"
                        and all(rows[c["id"]]["limit"] == f"{c['limit_a']:.1f}"
                                and reason_shown(c, rows[c["id"]]["reason"])
                                and rows[c["id"]]["protocol"] == c["protocol"] for c in site["chargers"]))

            async def wait_until_page_shows(capacity_a: float) -> None:
                end = datetime.now(UTC).timestamp() + 20
                while not await matches_api(capacity_a):
                    assert datetime.now(UTC).timestamp() < end, await page_rows(page)
                    await page.wait_for_timeout(300)

            await wait_until_page_shows(60.0)
            assert await page.text_content(".capacity-source") == "forecast"
            headers = await page.eval_on_selector_all("table.chargers th", "ths => ths.map(t => t.textContent)")
            assert "reason" in headers and "limit A" in headers and "last push" in headers
            first = {cid: float(row["limit"]) for cid, row in (await page_rows(page)).items()}
            first_reasons = {cid: row["reason"] for cid, row in (await page_rows(page)).items()}

            assert await cp.send_forecast("depot", blocks(13.8)) == 204  # 20 A per phase
            await wait_until_page_shows(20.0)  # the page refreshes itself, no reload
            now = {cid: float(row["limit"]) for cid, row in (await page_rows(page)).items()}
            assert sum(now.values()) <= 20.0 + 1e-6 < sum(first.values())
            # 20 A for four cars of 6 A minimum: one waits, and its row says why.
            reasons = {cid: row["reason"].split(" ")[0] for cid, row in (await page_rows(page)).items()}
            paused = [cid for cid, limit in now.items() if limit == 0]
            assert paused and all(reasons[cid] in ("paused_min_not_admitted", "plan", "priority") for cid in paused)
            assert {reasons[cid] for cid in now if cid not in paused} <= {"capacity", "not_drawing"}, reasons
            changed = [cid for cid in paused if first_reasons[cid].split(" ")[0] != reasons[cid]]
            assert changed, (first_reasons, reasons)
            log = (tmp_path / "service.log").read_text()
            assert any(f"charger {cid}: limit reason " in log for cid in changed), log[-2000:]
            OUT.mkdir(exist_ok=True)
            await page.screenshot(path=str(OUT / "status.png"), full_page=True)
            await browser.close()
    finally:
        for c in chargers:
            await c.stop()
        await cp.stop()
        service.stop()
