"""The operator console in a real headless Chromium (Debian's chromium + chromedriver, driven
by Selenium; no browser is downloaded), against a real node, Redis and MQTT clients.

One browser for the module. Selenium is synchronous, so each test's browser steps run in a
worker thread while the node serves on the event loop. Screenshots of the main pages go to
``$COREM_CONSOLE_SCREENSHOTS`` (default: the test's tmp dir); docs/img/console-*.png are
picked from them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from corem_ingress import devcerts
from corem_ingress.adapters import http, mqtt
from corem_ingress.adapters.http.console import CSP
from corem_ingress.app import Node
from corem_ingress.core.proof import sign_challenge
from tests.lwm2m.conftest import provision
from tests.mqtt.conftest import (
    MOSQUITTO_PUB,
    RawClient,
    client_ssl,
    connect_packet,
    mqtt_section,
    provision_key,
)

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.fail(
        "the console's browser tests need Debian's chromium and chromium-driver "
        "(scripts/install-deps.sh installs them)",
        pytrace=False,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_S = 15


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="corem-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={profile}", "--window-size=1280,800"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("COREM_CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


# -- browser helpers (run in the worker thread) ------------------------------------------------
def viewport(driver: WebDriver, width: int, height: int, mobile: bool = False) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def wait(driver: WebDriver, predicate: Callable[[WebDriver], Any], what: str) -> Any:
    # Pages that refresh themselves (sessions, health) replace elements between two looks.
    return WebDriverWait(
        driver,
        WAIT_S,
        poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(predicate, message=what)


def css(driver: WebDriver, selector: str) -> Any:
    return wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector), selector)


def text_of(driver: WebDriver, selector: str, needle: str) -> Any:
    def found(d: WebDriver) -> Any:
        els = d.find_elements(By.CSS_SELECTOR, selector)
        return next((e for e in els if needle in e.text), False)

    return wait(driver, found, f"{selector} containing {needle!r}")


def sign_in(driver: WebDriver, base: str, token: str) -> None:
    driver.get(f"{base}/console/")
    field = css(driver, "#token")
    field.clear()
    field.send_keys(token, Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.ID, "menu").is_displayed(), "signed in")


def go(driver: WebDriver, page: str) -> None:
    driver.execute_script("location.hash = arguments[0]", page)


def confirm(driver: WebDriver, expect: str) -> None:
    dialog = css(driver, "dialog#confirm[open]")
    assert expect in dialog.text, dialog.text
    driver.find_element(By.ID, "confirm-ok").click()


def no_sideways_scroll(driver: WebDriver) -> bool:
    return bool(
        driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
            " && document.body.scrollWidth <= window.innerWidth"
        )
    )


# -- nodes ---------------------------------------------------------------------------------------
async def console_node(start_node: Any, operator_tokens: Any, pki: Any) -> tuple[Node, str]:
    path, _ = operator_tokens
    node: Node = await start_node(
        [http.build, mqtt.build],
        http={"admin_tokens_file": str(path)},
        mqtt=mqtt_section(pki, client_auth="optional"),
        sessions={"index_interval_s": 0.25},
        limits={"auth_fail_max": 0},
    )
    http_listener = next(x for x in node.listeners if x.name == "http")
    return node, f"http://127.0.0.1:{http_listener.port}"


def mqtt_port(node: Node) -> int:
    return int(next(x for x in node.listeners if x.name == "mqtt").port)


def publish(pki: Any, port: int, dev: Any, payload: dict[str, Any]) -> None:
    """One uplink through a real mosquitto_pub, the API key as its password."""
    r = subprocess.run(
        [
            MOSQUITTO_PUB,
            "--cafile",
            str(pki.ca_file),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-i",
            dev.device_id,
            "-u",
            "device",
            "-P",
            dev.api_key,
            "-t",
            f"devices/{dev.device_id}/up/telemetry",
            "-m",
            json.dumps(payload),
            "-q",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# -- tests ---------------------------------------------------------------------------------------
async def test_sign_in_keyboard_menu_and_provision_with_the_secret_shown_once(
    browser: WebDriver, start_node: Any, operator_tokens: Any, pki: Any, shots: Path
) -> None:
    _, tokens = operator_tokens
    _node, base = await console_node(start_node, operator_tokens, pki)
    ca = devcerts.make_ca("console test CA")
    ca_pem, ca_fingerprint = ca.cert_pem.decode(), ca.fingerprint

    def sign(challenge: str) -> str:
        return base64.b64encode(sign_challenge(ca.key, challenge)).decode()

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/console/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert resp.headers["Content-Security-Policy"] == CSP
            assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert "<script>" not in await resp.text()  # no inline script
        async with session.get(f"{base}/console/secrets.txt") as resp:
            assert resp.status == 404
        async with session.get(f"{base}/console", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/console/"
            assert resp.headers["X-Frame-Options"] == "DENY"

    def flow() -> None:
        d = browser
        viewport(d, 1280, 800)
        d.get(f"{base}/console/")
        css(d, "#token").send_keys("cop_wrong", Keys.ENTER)
        text_of(d, "#sign-in-error", "401")
        sign_in(d, base, tokens["acme"])
        assert "tenant acme" in css(d, "#who").text
        assert d.execute_script("return document.cookie") == ""
        assert d.execute_script("return sessionStorage.length") == 1
        d.save_screenshot(str(shots / "console-devices.png"))

        # Keyboard: Tab from the top reaches the main menu; Enter opens a page.
        d.find_element(By.TAG_NAME, "body").click()
        d.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
        order = []
        for _ in range(12):
            d.switch_to.active_element.send_keys(Keys.TAB)
            order.append(d.switch_to.active_element.text)
            if order[-1] == "Provision":
                break
        assert order[-2:] == ["Devices", "Provision"], order
        d.switch_to.active_element.send_keys(Keys.ENTER)
        wait(d, lambda d: d.execute_script("return location.hash") == "#/provision", "#/provision")
        assert css(d, "#view h1").text == "Provision a device"
        current = d.find_element(By.CSS_SELECTOR, "#menu a[aria-current=page]")
        assert current.text == "Provision"

        # Labels: every form control of the page has one.
        unlabelled = d.execute_script(
            "return [...document.querySelectorAll('#view input, #view select, #view textarea')]"
            ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id)"
        )
        assert unlabelled == []

        css(d, "#hw-id").send_keys("browser-hw-1")
        Select(css(d, "#kind")).select_by_value("api_key")
        d.find_element(By.ID, "provision-submit").click()
        secret_box = text_of(d, ".secret", "cannot be shown again")
        secret = d.find_element(By.ID, "secret-value").text
        assert re.fullmatch(r"sk_live_[A-Za-z0-9_-]{43}", secret), secret
        assert secret_box.find_element(By.TAG_NAME, "button").text == "Copy"
        entry = text_of(d, ".audit-entry", "devices.provision")
        assert "admin:ops-acme" in entry.text and secret not in entry.text
        device_id = d.find_element(By.ID, "new-device-id").text
        d.save_screenshot(str(shots / "console-provision.png"))

        # Once: the device page, and the provision page again, never show it.
        d.find_element(By.LINK_TEXT, "Open the device").click()
        text_of(d, "#credential-table", "api_key")
        assert secret not in d.page_source
        go(d, "#/provision")
        css(d, "#provision-form")
        assert secret not in d.page_source
        # Provisioning the same hardware id again returns no second secret.
        css(d, "#hw-id").send_keys("browser-hw-1")
        d.find_element(By.ID, "provision-submit").click()
        text_of(d, "#provision-result", "no new secret")
        assert not d.find_elements(By.ID, "secret-value")

        # A tenant CA, added with proof of possession (the challenge signed outside the
        # browser, as an operator would with openssl), then removed after confirmation.
        go(d, "#/cas")
        text_of(d, "#cas-list", "No CA")
        css(d, "#view details summary").click()
        d.execute_script("arguments[0].value = arguments[1]", css(d, "#ca-pem"), ca_pem)
        next(
            b for b in d.find_elements(By.TAG_NAME, "button") if b.text == "Get a challenge"
        ).click()
        challenge = wait(d, lambda d: d.find_element(By.ID, "ca-challenge").text, "challenge")
        css(d, "#ca-signature").send_keys(sign(challenge))
        next(b for b in d.find_elements(By.TAG_NAME, "button") if b.text == "Add CA").click()
        text_of(d, ".audit-entry", "cas.add")
        row = text_of(d, "#cas-list", ca_fingerprint)
        row.find_element(By.CSS_SELECTOR, "button.danger").click()
        confirm(d, "stop authenticating")
        text_of(d, ".audit-entry", "cas.remove")

        # Tenant isolation: globex sees nothing of acme's.
        d.find_element(By.ID, "sign-out").click()
        sign_in(d, base, tokens["globex"])
        go(d, "#/devices")
        css(d, "#device-table")
        assert not d.find_elements(By.CSS_SELECTOR, "#device-table tbody tr")
        css(d, "#device-search").send_keys(device_id, Keys.ENTER)
        text_of(d, "#device-results", "No device")
        go(d, f"#/device/{device_id}")
        text_of(d, "#device-page", "404")

    await asyncio.to_thread(flow)


async def test_live_tail_and_a_confirmed_revocation_that_disconnects_a_live_mqtt_device(
    browser: WebDriver,
    start_node: Any,
    operator_tokens: Any,
    pki: Any,
    registry: Any,
    shots: Path,
) -> None:
    _, tokens = operator_tokens
    node, base = await console_node(start_node, operator_tokens, pki)
    port = mqtt_port(node)
    dev = await provision_key(registry, "acme", "browser-hw-2")

    def tail_flow() -> None:
        d = browser
        viewport(d, 1280, 800)
        sign_in(d, base, tokens["acme"])
        go(d, "#/uplinks")
        css(d, "#tail-device").send_keys(dev.device_id)
        d.find_element(By.ID, "tail-start").click()
        text_of(d, "#tail-status", "live")
        publish(pki, port, dev, {"temp": 21.5, "n": 1})
        first = text_of(d, "#tail-list li", '"n": 1')
        shown = json.loads(first.find_element(By.CSS_SELECTOR, "pre").text)
        assert shown["device_id"] == dev.device_id and shown["transport"] == "mqtt"
        assert shown["payload"] == {"temp": 21.5, "n": 1}
        # Pause: nothing new is shown; resume: what came meanwhile arrives (Last-Event-ID).
        d.find_element(By.ID, "tail-pause").click()
        text_of(d, "#tail-status", "paused")
        publish(pki, port, dev, {"temp": 22.0, "n": 2})
        time.sleep(0.5)  # an event would be shown within this if the tail were still open
        assert '"n": 2' not in css(d, "#tail-list").text
        assert d.find_element(By.ID, "tail-pause").text == "Resume"
        d.find_element(By.ID, "tail-pause").click()
        text_of(d, "#tail-list li", '"n": 2')
        assert len(d.find_elements(By.CSS_SELECTOR, "#tail-list li")) == 2
        # An HTTP uplink (curl, the device's API key) appears in the same live tail.
        sent = subprocess.run(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                f"X-API-Key: {dev.api_key}",
                "-H",
                "Content-Type: application/json",
                "--data",
                json.dumps({"kind": "telemetry", "payload": {"n": 3}}),
                f"{base}/api/v1/devices/{dev.device_id}/uplink",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert sent.stdout == "202", sent.stdout + sent.stderr
        third = text_of(d, "#tail-list li", '"n": 3')
        assert json.loads(third.find_element(By.CSS_SELECTOR, "pre").text)["transport"] == "http"
        d.save_screenshot(str(shots / "console-uplinks.png"))

    await asyncio.to_thread(tail_flow)
    # A live device (connected after the publishes: a new connection of the same device
    # takes its session over).
    device = await RawClient.open(port, client_ssl(pki, None))
    await device.send(connect_packet(dev.device_id, password=dev.api_key))
    connack = await device.read_packet()
    assert connack is not None and connack[3] == 0

    def revoke_flow() -> None:
        d = browser
        # The device page: its live session, then a revocation (confirmed).
        go(d, f"#/device/{dev.device_id}")
        text_of(d, "#device-sessions", "mqtt")
        text_of(d, "#device-uplinks", '"n":2')
        d.save_screenshot(str(shots / "console-device.png"))
        # A downlink to the live device: the API's answer is shown.
        payload = css(d, "#downlink-payload")
        payload.clear()
        payload.send_keys('{"led": "on"}')
        next(
            b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text == "Send downlink"
        ).click()
        answer = text_of(d, "#downlink-result", "Answer 202")
        assert dev.device_id in answer.text and "message_id" in answer.text
        d.find_element(By.CSS_SELECTOR, "#credential-table button[data-revoke]").click()
        css(d, "dialog#confirm[open]")
        d.find_element(By.ID, "confirm-cancel").click()  # cancel: nothing happens
        time.sleep(0.3)
        assert "done" not in css(d, "#action-result").text
        d.find_element(By.CSS_SELECTOR, "#credential-table button[data-revoke]").click()
        confirm(d, "disconnected on every node")
        entry = text_of(d, ".audit-entry", "keys.revoke")
        assert '"outcome": "OK"' in entry.text
        text_of(d, "#device-sessions", "No live session")

    await asyncio.to_thread(revoke_flow)
    assert await device.closed_by_server()
    await device.close()
    assert node.services is not None and len(node.services.sessions) == 0

    # A disconnect (not a revocation) from the sessions page: a second device.
    dev2 = await provision_key(registry, "acme", "browser-hw-3")
    other = await RawClient.open(port, client_ssl(pki, None))
    await other.send(connect_packet(dev2.device_id, password=dev2.api_key))
    assert (await other.read_packet()) is not None

    def disconnect_flow() -> None:
        d = browser
        go(d, "#/sessions")
        text_of(d, "#sessions-list", dev2.device_id)
        d.save_screenshot(str(shots / "console-sessions.png"))
        d.find_element(By.CSS_SELECTOR, "#sessions-list button[data-disconnect]").click()
        confirm(d, "not a revocation")
        text_of(d, "#action-result", "not revoked")
        text_of(d, ".audit-entry", "sessions.disconnect")

    await asyncio.to_thread(disconnect_flow)
    assert await other.closed_by_server()
    await other.close()
    # Not revoked: it connects again.
    again = await RawClient.open(port, client_ssl(pki, None))
    await again.send(connect_packet(dev2.device_id, password=dev2.api_key))
    connack = await again.read_packet()
    assert connack is not None and connack[3] == 0
    await again.close()


async def test_pages_fit_a_phone_and_a_laptop(
    browser: WebDriver, start_node: Any, operator_tokens: Any, pki: Any, registry: Any, shots: Path
) -> None:
    _, tokens = operator_tokens
    node, base = await console_node(start_node, operator_tokens, pki)
    hardware_id = "browser-hw-4-with-a-rather-long-hardware-id"
    dev = await provision_key(registry, "acme", hardware_id)
    await asyncio.to_thread(publish, pki, mqtt_port(node), dev, {"t": 1})
    pages = [
        "#/devices",
        f"#/device/{dev.device_id}",
        "#/provision",
        "#/sessions",
        "#/uplinks",
        "#/audit",
        "#/health",
    ]

    def rotate() -> str:
        """Find the device by hardware id, rotate its key with a chosen overlap: the new key
        is shown once and the old one's overlap counts down."""
        d = browser
        viewport(d, 1280, 800)
        sign_in(d, base, tokens["acme"])
        go(d, "#/devices")
        css(d, "#device-search").send_keys(hardware_id, Keys.ENTER)
        text_of(d, "#device-table", dev.device_id).find_element(By.TAG_NAME, "a").click()
        overlap = css(d, "#credential-table input[type=number]")
        overlap.clear()
        overlap.send_keys("600")
        next(b for b in d.find_elements(By.TAG_NAME, "button") if b.text == "Rotate").click()
        text_of(d, ".secret", "cannot be shown again")
        new_key = str(d.find_element(By.ID, "secret-value").text)
        left = wait(d, lambda d: d.find_element(By.ID, "overlap-countdown").text, "countdown")
        assert 500 <= int(left.split()[0]) <= 600, left  # counting down from the 600 s chosen
        text_of(d, ".audit-entry", "keys.rotate")
        text_of(d, "#credential-table", "rotated")  # the table is current, the secret stays
        assert d.find_element(By.ID, "secret-value").text == new_key
        return new_key

    new_key = await asyncio.to_thread(rotate)
    assert new_key != dev.api_key
    (old, new) = sorted(
        await registry.credentials("acme", dev.device_id), key=lambda c: c.created_at
    )
    assert (old.status, new.status) == ("rotated", "active")

    def flow() -> None:
        d = browser
        for width, height, mobile in ((375, 740, True), (1280, 800, False)):
            viewport(d, width, height, mobile)
            for page in pages:
                go(d, page)
                css(d, "#view h1")
                if page.startswith("#/device/"):
                    text_of(d, "#credential-table", "rotated")
                    css(d, "[data-until]")
                if page == "#/health":
                    css(d, "#health svg.chart")
                assert no_sideways_scroll(d), (width, page)
                if mobile:
                    name = page.strip("#/").split("/")[0] or "devices"
                    d.save_screenshot(str(shots / f"console-phone-{name}.png"))
            # The menu stays reachable: every link is on screen.
            for link in d.find_elements(By.CSS_SELECTOR, "#menu a"):
                assert link.is_displayed() and link.rect["x"] + link.rect["width"] <= width
        go(d, "#/health")
        text_of(d, "#health", node.config.node_id)
        d.save_screenshot(str(shots / "console-health.png"))
        go(d, "#/audit")
        text_of(d, "#audit-list", "keys.rotate")
        d.save_screenshot(str(shots / "console-audit.png"))
        css(d, "#audit-action").send_keys("devices.", Keys.ENTER)  # filtered: no keys.* left
        wait(d, lambda d: "keys.rotate" not in css(d, "#audit-list").text, "audit filter")
        assert "devices." in css(d, "#audit-list").text

    await asyncio.to_thread(flow)


async def test_an_lwm2m_read_from_the_object_tree(
    browser: WebDriver, lwm2m_node: Any, operator_tokens: Any, shots: Path
) -> None:
    _, tokens = operator_tokens
    n = await lwm2m_node()
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()  # the simulator's LwM2M client, over real DTLS (PSK)

    def flow() -> None:
        d = browser
        viewport(d, 1280, 800)
        sign_in(d, n.api.base, tokens["acme"])
        go(d, f"#/device/{p.device_id}")
        tree = text_of(d, "#device-lwm2m", p.hardware_id)
        assert "/3/0 Device" in tree.text and "/3303/0 Temperature" in tree.text
        summary = next(
            s for s in d.find_elements(By.CSS_SELECTOR, ".lwm2m-tree summary") if "/3/0" in s.text
        )
        summary.click()
        d.find_element(By.CSS_SELECTOR, 'button[data-op="read"][data-path="/3/0/0"]').click()
        result = text_of(d, ".lwm2m-result", "read /3/0/0: 2.05")
        assert "CORE-M" in result.text  # the client's manufacturer, read from the device
        d.execute_script("arguments[0].scrollIntoView({block: 'end'})", result)
        d.save_screenshot(str(shots / "console-lwm2m.png"))

    await asyncio.to_thread(flow)
