"""The demo page in two real headless Chromium pages, against a real `chat-server serve --demo`.

Alice and Bob sign in, Alice opens a 1:1 room with Bob and writes; Bob's page shows it live.
Then Bob's page loses its WebSocket without a DISCONNECT (`window.chatDemo.dropConnection(ms)`,
the page's test hook: it closes the socket the way a network failure would and keeps the page
offline for at least `ms` before its own backoff reconnects). Alice writes more meanwhile; Bob's
page reconnects by itself, resumes the room with `x-resume-after`, and shows every message once,
in order. Then Alice's page goes offline while she writes: the SEND waits, goes out after the
reconnect, and Bob sees it once. A screenshot of Bob's page goes to test-artifacts/demo.png.

Room state: who is online (a dot by each member), "bob is typing…", "Seen by bob" under the last
message Bob read, and unread badges from the server that clear on every device when read on one,
with Bob on a desktop page and on a 390 px phone page (one pane at a time). Screenshots:
test-artifacts/roomstate-desktop.png, roomstate-phone.png and roomstate-phone-rooms.png.

Needs Debian's `chromium` and `chromium-driver` (skipped without them; .ci/run installs them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import REPO_ROOT, free_port, require_binaries

pytest.importorskip("selenium")

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = REPO_ROOT / "test-artifacts"
WAIT_S = 15.0
#: How long Bob's page stays offline after the drop; Alice's three sends take well under it.
OFFLINE_HOLD_MS = 3000
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,760",
)


@pytest.fixture
def browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver); checked before the server starts, so a skip leaves nothing."""
    chromium, chromedriver = require_binaries("chromium", "chromedriver")
    return chromium, chromedriver


@pytest.fixture
def demo_server(tmp_path: Path, browser_binaries: tuple[str, str]) -> Iterator[str]:
    """`chat-server serve --demo` in its own process, on a temp SQLite file and a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DATABASE_URL"))}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/chat.db"
    env["CHAT_JWT_SECRET"] = "browser-test-secret-long-enough-for-hs256"
    env["CHAT_REST_REQUESTS_PER_S"] = "0"  # the history test posts its messages in a burst
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chat_server", "serve", "--demo", "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, process, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited:\n{log_path.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling a port another process opens: no event to await
    raise AssertionError("the server did not start listening within 30 s")


@pytest.fixture
def open_page(browser_binaries: tuple[str, str]) -> Iterator[Callable[[str], WebDriver]]:
    """`open_page(url)`: a fresh headless Chromium (own profile dir) on that page."""
    chromium, chromedriver = browser_binaries
    drivers: list[WebDriver] = []
    profiles: list[tempfile.TemporaryDirectory[str]] = []

    def open_one(url: str) -> WebDriver:
        profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        profiles.append(profile)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile.name}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
        drivers.append(driver)
        driver.get(url)
        return driver

    yield open_one
    for driver in drivers:
        driver.quit()
    for profile in profiles:
        profile.cleanup()


# ---- page helpers --------------------------------------------------------------------------


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        condition, f"waiting for {what}"
    )


def status(driver: WebDriver) -> str:
    value: str = driver.find_element(By.ID, "status").get_attribute("data-state") or ""
    return value


def sign_in(driver: WebDriver, name: str) -> None:
    driver.find_element(By.ID, "signin-name").send_keys(name)
    driver.find_element(By.ID, "signin-form").submit()
    wait_for(driver, lambda d: status(d) == "connected", f"{name} to connect")


def shown_messages(driver: WebDriver) -> list[tuple[int, str, str]]:
    """(seq, sender, content) of every stored message the open room shows, in page order."""
    rows: list[tuple[int, str, str]] = driver.execute_script(
        """return [...document.querySelectorAll('#message-list .message')].map((m) => [
               Number(m.dataset.seq), m.querySelector('.sender').textContent,
               m.querySelector('.content').textContent]);"""
    )
    return [(seq, sender, content) for seq, sender, content in rows]


def pending_count(driver: WebDriver) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, "#pending-list .message"))


def send(driver: WebDriver, text: str) -> None:
    field = driver.find_element(By.ID, "composer-input")
    field.send_keys(text)
    driver.find_element(By.ID, "composer").submit()


def contents(driver: WebDriver) -> list[str]:
    return [content for _, _, content in shown_messages(driver)]


# ---- the test ------------------------------------------------------------------------------


def test_two_users_chat_and_a_dropped_page_catches_up_exactly_once(
    demo_server: str, open_page: Callable[[str], WebDriver]
) -> None:
    alice = open_page(demo_server)
    bob = open_page(demo_server)
    sign_in(alice, "alice")
    sign_in(bob, "bob")

    # Alice opens a 1:1 room with Bob; Bob's page learns of it from its notifications queue.
    alice.find_element(By.ID, "new-direct-id").send_keys("bob")
    alice.find_element(By.ID, "new-direct-form").submit()
    wait_for(alice, lambda d: d.find_element(By.ID, "room-title").text == "bob", "alice's room")
    room = wait_for(bob, lambda d: d.find_elements(By.CSS_SELECTOR, "#room-list li"), "bob's room")
    room[0].click()
    wait_for(bob, lambda d: d.find_element(By.ID, "room-title").text == "alice", "bob's room open")

    # Live: Alice writes, Bob's page shows it with the sender; markup stays text.
    first = ["hello bob", "<b>not bold</b> & <script>alert(1)</script>"]
    for text in first:
        send(alice, text)
    wait_for(bob, lambda d: contents(d) == first, "bob to see alice's messages")
    assert [(seq, sender) for seq, sender, _ in shown_messages(bob)] == [(1, "alice"), (2, "alice")]
    assert not bob.find_elements(By.CSS_SELECTOR, "#message-list b, #message-list script")

    # Bob's page loses its connection; Alice writes while it is offline.
    bob.execute_script(f"window.chatDemo.dropConnection({OFFLINE_HOLD_MS});")
    wait_for(bob, lambda d: status(d) == "offline", "bob's page to notice the drop")
    while_away = ["are you there?", "one", "two"]
    for text in while_away:
        send(alice, text)
    expected = first + while_away
    wait_for(alice, lambda d: contents(d) == expected and pending_count(d) == 0, "alice's sends")
    assert status(bob) == "offline", "bob's page reconnected before alice's messages were stored"

    # Bob's page reconnects by itself and resumes the room: everything once, in order.
    wait_for(bob, lambda d: status(d) == "connected", "bob's page to reconnect")
    wait_for(bob, lambda d: len(contents(d)) >= len(expected), "bob to catch up")
    assert shown_messages(bob) == [
        (seq, "alice", text) for seq, text in enumerate(expected, start=1)
    ]
    assert bob.execute_script("return window.chatDemo.info().connects") == 2

    # Alice's page goes offline while she writes: the SEND waits and goes out after the reconnect.
    alice.execute_script("window.chatDemo.dropConnection(1000);")
    wait_for(alice, lambda d: status(d) == "offline", "alice's page to notice the drop")
    send(alice, "sent while offline")
    assert pending_count(alice) == 1
    expected.append("sent while offline")
    wait_for(alice, lambda d: contents(d) == expected and pending_count(d) == 0, "alice's resend")
    send(bob, "got them all, thanks")
    expected.append("got them all, thanks")
    wait_for(alice, lambda d: contents(d) == expected, "alice to see bob's reply")
    wait_for(bob, lambda d: contents(d) == expected, "bob to see everything")
    assert [seq for seq, _, _ in shown_messages(bob)] == list(range(1, len(expected) + 1))

    # A group room: Alice's page learns of it from its notifications; Bob goes back to the chat.
    bob.find_element(By.ID, "new-group-name").send_keys("team")
    bob.find_element(By.ID, "new-group-members").send_keys("alice, carol")
    bob.find_element(By.ID, "new-group-form").submit()
    wait_for(bob, lambda d: d.find_element(By.ID, "room-title").text == "team", "bob's group")
    wait_for(alice, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#room-list li")) == 2,
             "alice to be told of the group")
    bob.find_element(By.XPATH, "//ul[@id='room-list']/li[.//*[text()='alice']]").click()
    wait_for(bob, lambda d: contents(d) == expected, "bob's chat with alice again")

    ARTIFACTS.mkdir(exist_ok=True)
    assert bob.save_screenshot(str(ARTIFACTS / "demo.png"))


def _post_json(url: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def _shows(count: int) -> Callable[[WebDriver], bool]:
    return lambda driver: len(shown_messages(driver)) == count


def test_history_loads_on_scroll(demo_server: str, open_page: Callable[[str], WebDriver]) -> None:
    total = 70  # the page loads 30 at a time: three pages, the last one short
    token = _post_json(f"{demo_server}/demo/sign-in", {"userId": "carol"})["token"]
    room = _post_json(f"{demo_server}/api/chat-rooms", {"participantId": "dave"}, token)
    for n in range(1, total + 1):
        _post_json(f"{demo_server}/api/chat-rooms/{room['id']}/messages",
                   {"content": f"message {n}"}, token)

    dave = open_page(demo_server)
    sign_in(dave, "dave")
    wait_for(dave, lambda d: d.find_element(By.ID, "room-title").text == "carol", "the room")
    wait_for(dave, lambda d: len(shown_messages(d)) >= 30, "the newest page")
    scroll_up = "document.getElementById('messages').scrollTop = 0;"
    for shown in (60, total):
        dave.execute_script(scroll_up)
        wait_for(dave, _shows(shown), f"{shown} messages")
    wait_for(dave, lambda d: d.find_element(By.ID, "history-status").text
             == "Start of the conversation", "the start of the conversation")
    assert shown_messages(dave) == [(n, "carol", f"message {n}") for n in range(1, total + 1)]


# ---- room state: presence, typing, seen by, unread badges; the phone layout ----------------

PHONE_WIDTH = 390


def is_online(driver: WebDriver, user: str) -> bool:
    found: bool = driver.execute_script(
        "const m = document.querySelector(`#room-members .member[data-user='${arguments[0]}']`);"
        "return Boolean(m && m.classList.contains('online'));", user)
    return found


def typing_line(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "typing").text


def seen_marks(driver: WebDriver) -> dict[int, str]:
    """seq -> the "Seen by ..." text under that message, for every message that has one."""
    marks: list[tuple[int, str]] = driver.execute_script(
        """return [...document.querySelectorAll('#message-list .message .seen')].map((s) =>
               [Number(s.closest('.message').dataset.seq), s.textContent]);""")
    return {seq: text for seq, text in marks}


def badge(driver: WebDriver, label: str) -> str:
    """The unread badge of the room listed as `label` ("" when none)."""
    text: str = driver.execute_script(
        """const item = [...document.querySelectorAll('#room-list li')].find((li) =>
               li.querySelector('.room-name').textContent === arguments[0]);
           if (!item) return null;
           const b = item.querySelector('.unread'); return b ? b.textContent : '';""", label)
    return text


def open_room(driver: WebDriver, label: str) -> None:
    driver.find_element(
        By.XPATH, f"//ul[@id='room-list']/li[.//*[@class='room-name' and text()='{label}']]"
    ).click()
    wait_for(driver, lambda d: d.find_element(By.ID, "room-title").text == label,
             f"{label} open")


def layout_problems(driver: WebDriver) -> list[str]:
    """What would look broken on a narrow screen: sideways scrolling, bubbles squeezed to a few
    letters, the list and the room side by side."""
    found: list[str] = driver.execute_script(
        """const problems = [];
           const width = window.innerWidth;
           const scrolled = document.documentElement.scrollWidth;
           if (scrolled > width + 1) problems.push(`page scrolls sideways: ${scrolled} > ${width}`);
           for (const bubble of document.querySelectorAll('#message-list .content')) {
             const r = bubble.getBoundingClientRect();
             if (r.right > width + 1) problems.push(`bubble past the edge: ${r.right}`);
             if (bubble.textContent.length > 12 && r.width < 120)
               problems.push(`bubble squeezed to ${r.width}px`);
           }
           const sidebar = document.querySelector('.sidebar').getBoundingClientRect();
           const talk = document.querySelector('.conversation').getBoundingClientRect();
           if (sidebar.width > 0 && talk.width > 0) problems.push('two panes side by side');
           return problems;""")
    return found


def test_presence_typing_seen_by_and_badges_across_devices_and_a_phone(
    demo_server: str, open_page: Callable[[str], WebDriver]
) -> None:
    alice = open_page(demo_server)
    bob = open_page(demo_server)
    sign_in(alice, "alice")
    sign_in(bob, "bob")
    alice.find_element(By.ID, "new-direct-id").send_keys("bob")
    alice.find_element(By.ID, "new-direct-form").submit()
    wait_for(alice, lambda d: d.find_element(By.ID, "room-title").text == "bob", "alice's room")
    wait_for(bob, lambda d: d.find_elements(By.CSS_SELECTOR, "#room-list li"), "bob's room")
    open_room(bob, "alice")

    # Who is online: a dot by each member, from the room's events.
    wait_for(alice, lambda d: is_online(d, "bob") and is_online(d, "alice"), "bob's dot")
    wait_for(bob, lambda d: is_online(d, "alice"), "alice's dot")

    # Typing: Bob types, Alice sees it; he clears the field, it goes.
    field = bob.find_element(By.ID, "composer-input")
    field.send_keys("hel")
    wait_for(alice, lambda d: typing_line(d) == "bob is typing…", "bob is typing")
    field.send_keys("\b\b\b")
    wait_for(alice, lambda d: typing_line(d) == "", "bob stopped typing")

    # Seen by: Bob has the room open, so what Alice writes is read at once.
    send(alice, "are you there?")
    wait_for(alice, lambda d: seen_marks(d) == {1: "Seen by bob"}, "seen by bob")
    # Bob types and sends: his message ends his typing, and is his read marker too.
    field.send_keys("yes")
    wait_for(alice, lambda d: typing_line(d) == "bob is typing…", "bob typing again")
    bob.find_element(By.ID, "composer").submit()
    wait_for(alice, lambda d: contents(d) == ["are you there?", "yes"] and typing_line(d) == "",
             "bob's reply, and no more typing")

    # Unread badges: Bob looks at another room while Alice writes.
    token = _post_json(f"{demo_server}/demo/sign-in", {"userId": "carol"})["token"]
    _post_json(f"{demo_server}/api/chat-rooms", {"name": "team", "memberIds": ["bob"]}, token)
    wait_for(bob, lambda d: badge(d, "team") is not None, "bob told of the team room")
    open_room(bob, "team")
    for text in ("one", "two"):
        send(alice, text)
    wait_for(bob, lambda d: badge(d, "alice") == "2", "bob's badge counts alice's two")

    # Bob's phone: 390 px wide, one pane at a time; the badge comes from the server.
    phone = open_page(demo_server)
    phone.set_window_size(PHONE_WIDTH, 844)
    assert phone.execute_script("return window.innerWidth") <= PHONE_WIDTH
    sign_in(phone, "bob")
    wait_for(phone, lambda d: badge(d, "alice") == "2", "the phone's badge, from the server")
    assert phone.find_element(By.ID, "room-list").is_displayed()
    assert not phone.find_element(By.ID, "composer").is_displayed()
    ARTIFACTS.mkdir(exist_ok=True)
    assert phone.save_screenshot(str(ARTIFACTS / "roomstate-phone-rooms.png"))

    # Reading on the phone clears the badge on every device, and Alice sees it read.
    open_room(phone, "alice")
    wait_for(phone, lambda d: contents(d) == ["are you there?", "yes", "one", "two"],
             "the conversation on the phone")
    assert not phone.find_element(By.ID, "room-list").is_displayed()
    wait_for(bob, lambda d: badge(d, "alice") == "", "the desktop's badge cleared")
    wait_for(phone, lambda d: badge(d, "alice") == "", "the phone's badge cleared")
    wait_for(alice, lambda d: seen_marks(d) == {4: "Seen by bob"}, "seen by bob, moved on")
    phone.find_element(By.ID, "composer-input").send_keys("typing on my phone, a long line "
                                                          "that has to wrap on a narrow screen")
    wait_for(alice, lambda d: typing_line(d) == "bob is typing…", "bob typing on the phone")
    assert alice.save_screenshot(str(ARTIFACTS / "roomstate-desktop.png"))
    phone.find_element(By.ID, "composer").submit()
    wait_for(alice, lambda d: len(contents(d)) == 5 and typing_line(d) == "", "the phone's reply")
    wait_for(phone, lambda d: len(contents(d)) == 5 and seen_marks(d) == {5: "Seen by alice"},
             "the phone shows its reply, seen by alice")
    alice.find_element(By.ID, "composer-input").send_keys("ok")
    wait_for(phone, lambda d: typing_line(d) == "alice is typing…", "alice typing, on the phone")
    assert layout_problems(phone) == []
    assert phone.save_screenshot(str(ARTIFACTS / "roomstate-phone.png"))
    # Back to the list on the phone.
    phone.find_element(By.ID, "back").click()
    wait_for(phone, lambda d: d.find_element(By.ID, "room-list").is_displayed(), "the list")

    # Bob signs out everywhere: his dot goes grey on Alice's page.
    for device in (bob, phone):
        device.find_element(By.ID, "sign-out").click()
    wait_for(alice, lambda d: not is_online(d, "bob"), "bob offline")
