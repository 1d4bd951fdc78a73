"""The car passport page in a real headless Chromium, served by uvicorn over a DuckDB file,
opened through the owner's share link."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from fastapi import FastAPI

from serving.passport import DuckDBPassportSource, LeafFilePaths, ShareLinks, ShareStore, passport_router
from tests.fixtures.browser import serve_asgi
from tests.fixtures.passport_history import READINGS, ROLLBACK_MONTH, VEHICLE, History, build_history

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def history() -> History:
    return build_history()


@pytest.fixture(scope="module")
def links(tmp_path_factory: pytest.TempPathFactory) -> ShareLinks:
    return ShareLinks(bytes(range(32)), ShareStore(tmp_path_factory.mktemp("shares") / "shares.sqlite"))


@pytest.fixture(scope="module")
def site(history: History, links: ShareLinks, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("passport")
    con = duckdb.connect(str(history.write_duckdb(tmp / "serving.duckdb")), read_only=True)
    app = FastAPI()
    source = DuckDBPassportSource.from_connection(con)
    paths = LeafFilePaths(history.write_leaf_files(tmp / "logs"))
    app.include_router(passport_router(source, history.roots, paths, shares=links))
    try:
        with serve_asgi(app) as base:
            yield base
    finally:
        con.close()


def test_page_shows_the_curve_the_reasons_and_verifies_an_event(
    site: str, links: ShareLinks, page: Any, history: History, artifacts_dir: Path
) -> None:
    link = links.create(VEHICLE, 3600)  # the owner's share link
    response = page.goto(link.url(site))
    assert response is not None and response.status == 200
    assert page.locator("h1").inner_text() == f"Vehicle {VEHICLE}"
    assert "Shared by the owner" in page.locator("#access-note").inner_text()
    assert "Suspicious" in page.locator("#score-badge").inner_text()

    # one point per odometer value, oldest first, unverified ones drawn differently
    readings = history.readings()
    points = page.locator("#mileage-chart svg circle.pt")
    assert points.count() == len(readings)
    drawn = points.evaluate_all(
        "ps => ps.map(p => [p.dataset.eventId, Number(p.dataset.km), p.dataset.verification])"
    )
    expected = sorted(readings, key=lambda r: r["event_time"])
    assert drawn == [[r["event_id"], r["odometer_km"], r["verification"]] for r in expected]
    styles = points.evaluate_all(
        "ps => ps.map(p => [p.dataset.verification, getComputedStyle(p).fill, getComputedStyle(p).strokeDasharray])"
    )
    unverified = {tuple(s[1:]) for s in styles if s[0] == "unverified"}
    verified = {tuple(s[1:]) for s in styles if s[0] == "verified"}
    assert (
        len([s for s in styles if s[0] == "unverified"])
        == sum(1 for r in readings if r["verification"] != "verified")
        == 2
    )
    assert unverified.isdisjoint(verified)
    assert all(fill == "rgb(255, 255, 255)" and dash != "none" for fill, dash in unverified)
    # the rollback segment is drawn as a fall
    assert page.locator("#mileage-chart line.seg.down").count() == 1
    box = page.locator("#mileage-chart svg").bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 200

    # fraud reasons with their evidence
    reasons = page.locator("#fraud-reasons li.reason")
    assert reasons.count() == 1
    assert reasons.first.get_attribute("data-rule") == "odometer_rollback"
    rollback_id = next(r["event_id"] for r in readings if r["odometer_km"] == READINGS[ROLLBACK_MONTH][1])
    assert f"#ev-{rollback_id}" in reasons.first.locator("a.evidence").evaluate_all(
        "as => as.map(a => a.getAttribute('href'))"
    )

    # timeline: every event, accident highlighted, no private payload field on the page
    assert page.locator("#timeline tbody tr").count() == len(history.of_vehicle())
    assert page.locator("#timeline tr.accident_declaration").count() == 1
    text = page.locator("body").inner_text()
    for private in ("CLM-77-1093", "INV-2025-0042", "48.137", "24900", "410000"):
        assert private not in text
    assert page.locator("#wreck-status").inner_text() == "none declared"

    # verify links: the logged service checks out, an unanchored reading says so
    service = history.row("maintenance")
    row = page.locator(f"#ev-{service['event_id']}")
    row.locator("a.verify").click()
    page.wait_for_function(
        "id => !document.querySelector(`#ev-${id} .verify-result`).textContent.includes('checking')"
        " && document.querySelector(`#ev-${id} .verify-result`).textContent !== ''",
        arg=service["event_id"],
    )
    assert row.locator(".verify-result").inner_text() == "verified"
    manual = next(r for r in readings if r["verification"] == "unverified")
    unanchored = page.locator(f"#ev-{manual['event_id']}")
    unanchored.locator("a.verify").click()
    page.wait_for_function(
        "id => ['unanchored', 'verified', 'tampered', 'no proof', 'error'].includes("
        "document.querySelector(`#ev-${id} .verify-result`).textContent)",
        arg=manual["event_id"],
    )
    assert unanchored.locator(".verify-result").inner_text() == "unanchored"

    # the page's data link carries the share token: the browser opens it too
    data = page.evaluate("fetch(document.querySelector('footer a').href).then(r => r.status)")
    assert data == 200

    row.scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts_dir / "passport.png"), full_page=True)
    assert (artifacts_dir / "passport.png").stat().st_size > 20_000


def test_unknown_vehicle_page_says_so(site: str, links: ShareLinks, page: Any) -> None:
    unknown = f"v-{'0' * 32}"
    response = page.goto(links.create(unknown, 3600).url(site))
    assert response is not None and response.status == 404
    assert "no events for vehicle" in page.locator("#error").inner_text()


def test_without_a_share_link_the_page_shows_no_history(site: str, page: Any, history: History) -> None:
    response = page.goto(f"{site}/passport/{VEHICLE}")
    assert response is not None and response.status == 401
    assert "share link" in page.locator("#error").inner_text()
    assert page.locator("#mileage-chart").count() == 0 and page.locator("#timeline").count() == 0
