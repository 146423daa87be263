"""The fleet page in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): what an operator sees, clicking through to an instance and a run, with screenshots."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

import ophelia_db
from tests.helpers import HEAD
from tests.serve.conftest import XSS, ServedFleet, Server, start_server


@pytest.fixture
def browser(chromium: tuple[str, str]):
    binary, driver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):  # fmt: skip
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    session.set_page_load_timeout(60)
    yield session
    session.quit()


def rows_seen(browser) -> dict[str, str]:
    """``{instance: state}`` as the table shows them."""
    found = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "#instances tbody tr[data-instance]"):
        cells = row.find_elements(By.TAG_NAME, "td")
        found[cells[0].find_element(By.TAG_NAME, "a").text] = cells[4].text.split()[0]
    return found


def test_an_operator_sees_the_fleet_and_clicks_through(
    served_fleet: ServedFleet, server_factory: list[Server], browser, tmp_path: Path
) -> None:
    server = start_server(served_fleet.path, "--cache-seconds", "0")
    server_factory.append(server)
    ophelia_db.downgrade(served_fleet.fleet, served_fleet.fleet.get("inst1"), to="0004")

    browser.get(server.base + "/")
    assert rows_seen(browser) == {"hub": "up-to-date", "inst1": "outdated", "inst2": "up-to-date"}
    summary = browser.find_element(By.ID, "summary").text
    assert "2 at head" in summary and "1 behind" in summary
    # The community called <script> is shown as text, and no script ran.
    assert XSS in browser.find_element(By.CSS_SELECTOR, 'tr[data-instance="inst2"]').text
    assert browser.execute_script("return document.querySelectorAll('#instances script').length") == 0
    browser.save_screenshot(str(tmp_path / "fleet.png"))

    browser.find_element(By.LINK_TEXT, "inst1").click()
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("inst1")
    lines = browser.find_element(By.ID, "history").text.splitlines()[1:]
    history = {line.split()[0]: line for line in lines}
    assert "applied" in history["0004"] and "pending" in history[HEAD], lines
    assert "***" in browser.find_element(By.ID, "vault").text
    browser.save_screenshot(str(tmp_path / "instance.png"))

    browser.find_element(By.CSS_SELECTOR, "#runs tbody a").click()
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Run ")
    assert "downgrade to 0004" in browser.find_element(By.TAG_NAME, "main").text
    browser.save_screenshot(str(tmp_path / "run.png"))
    for shot in ("fleet.png", "instance.png", "run.png"):
        assert (tmp_path / shot).stat().st_size > 10_000, shot
