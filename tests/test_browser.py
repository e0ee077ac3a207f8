"""The browser chat app at `/`, driven by Playwright with Debian's chromium (never `playwright install`): streaming
text, the Thinking section, Stop (a disconnect the server acts on), Regenerate, and the error banner.

Without chromium or Playwright these tests fail with the install instruction (`make test` must not pass on a
machine that cannot run them); NANOSEEK_SKIP_BROWSER=1 skips them explicitly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from server_harness import ScriptedEngine, run_server

CHROMIUM = Path("/usr/bin/chromium")
SKIP_VARIABLE = "NANOSEEK_SKIP_BROWSER"
pytestmark = pytest.mark.skipif(
    os.environ.get(SKIP_VARIABLE) == "1", reason=f"{SKIP_VARIABLE}=1: the browser tests were skipped on request"
)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (with what to install), or None when they can."""
    problems = []
    if not CHROMIUM.exists():
        problems.append(f"Debian's chromium is not at {CHROMIUM}: run `apt-get install -y chromium`")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is missing: run `make venv` (it is a dev dependency)")
    if not problems:
        return None
    return (
        "the browser tests cannot run: "
        + "; ".join(problems)
        + f". To skip them deliberately, set {SKIP_VARIABLE}=1 (CI installs chromium in .ci/run)."
    )


ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
THOUGHTS = ["Let me add ", "the numbers: ", "2 + 2 ", "makes 4, ", "and <b>that</b> ", "is all.", "\n</think>\n\n"]
ANSWER = ["The answer ", "is **4** (`<b>4</b>`", ").", "\n\n```\n2 + 2 = 4\n```\nAnything else?"]


@pytest.fixture(scope="module")
def browser():
    problem = missing_browser()
    if problem:
        pytest.fail(problem, pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.keyboard.press("Enter")


def test_chat_streams_thinks_stops_and_regenerates(browser, artifacts_dir):
    from playwright.sync_api import expect

    engine = ScriptedEngine(THOUGHTS + ANSWER, delay=0.2)
    with run_server(lambda: engine) as (base, _):
        page = browser.new_page(viewport={"width": 1180, "height": 760})
        page.goto(f"{base}/")
        expect(page.locator("#model-name")).to_have_text("Model: tiny")
        send(page, "What is 2 + 2?")

        assistant = page.locator(".message.assistant").last
        thinking, answer = assistant.locator(".thinking"), assistant.locator(".answer")
        expect(thinking.locator(".thinking-text")).to_contain_text("Let me add", timeout=10_000)
        assert thinking.evaluate("e => e.open") and answer.inner_text() == ""  # reasoning streams first, open
        expect(page.locator("#stop")).to_be_visible()
        expect(answer).to_contain_text("The answer", timeout=10_000)
        assert not thinking.evaluate("e => e.open")  # collapsed once the answer starts
        expect(answer).to_contain_text("Anything else?", timeout=10_000)
        # a Markdown subset, built as nodes: bold, inline code (whose markup stays text), a code block
        assert answer.locator("strong").inner_text() == "4"
        assert answer.locator(":scope > code").inner_text() == "<b>4</b>"
        assert answer.locator("pre code").inner_text() == "2 + 2 = 4"
        expect(thinking.locator("summary")).to_contain_text("Thought for")
        expect(page.locator("#send")).to_be_visible()  # the stream has ended
        thought = "Let me add the numbers: 2 + 2 makes 4, and <b>that</b> is all."
        assert thinking.locator(".thinking-text").text_content() == thought  # (collapsed: not rendered text)
        assert page.locator(".message b").count() == 0  # model output is text, never HTML
        thinking.locator("summary").click()
        assert thinking.evaluate("e => e.open")
        expect(page.locator(".conversation.active")).to_contain_text("What is 2 + 2?")

        # a long second answer, stopped: the browser aborts the fetch and the server cancels the request
        engine.script = ["word "] * 400
        send(page, "Now write a long story.")
        expect(page.locator(".message.assistant").last.locator(".thinking-text")).to_contain_text("word word")
        assert len(engine.running) == 1
        page.click("#stop")
        wait_until(lambda: not engine.running, timeout=5)
        expect(page.locator(".message.assistant").last.locator(".message-footer")).to_contain_text("(stopped)")
        expect(page.locator("#send")).to_be_visible()

        # regenerate the last answer
        engine.script = THOUGHTS + ANSWER
        page.locator(".regenerate").click()
        expect(page.locator(".message.assistant").last.locator(".answer")).to_contain_text(
            "Anything else?", timeout=10_000
        )
        assert page.locator(".message.assistant").count() == 2
        page.locator(".message.assistant").last.locator(".thinking summary").click()  # show a thought, open
        page.screenshot(path=str(artifacts_dir / "chat.png"))

        # conversations live in localStorage: a reload shows them again; new chat and delete work
        page.reload()
        expect(page.locator(".message.user")).to_have_count(2)
        page.click("#new-chat")
        expect(page.locator(".conversation")).to_have_count(2)
        page.locator(".conversation.active .conversation-delete").click()
        expect(page.locator(".conversation")).to_have_count(1)
        page.close()


def test_error_banner_on_401_and_network_failure(browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    with run_server(lambda: ScriptedEngine(["ok", "</think>", "fine"]), api_keys=["right-key"]) as (base, _):
        page.goto(f"{base}/")
        banner = page.locator("#error")
        expect(banner).to_contain_text("401")  # listing models without a key already fails
        page.fill("#api-key", "wrong-key")
        page.dispatch_event("#api-key", "change")
        send(page, "hello")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("incorrect API key")
        page.click("#error-close")
        expect(banner).to_be_hidden()
        page.fill("#api-key", "right-key")
        page.dispatch_event("#api-key", "change")
        send(page, "hello again")
        expect(page.locator(".message.assistant").last.locator(".answer")).to_have_text("fine")
        expect(banner).to_be_hidden()
    send(page, "is anyone there?")  # the server is gone
    expect(page.locator("#error")).to_contain_text("Network error")
    page.close()
