"""The console in a real browser (Debian's chromium through Playwright) against a real segmentd
with demo data, on free loopback ports.

Needs the `segmentd` Python client and `playwright` (pip), and a Chromium at /usr/bin/chromium
(`apt-get install chromium`; SEGMENTD_CHROMIUM names another). Without a browser the tests skip,
unless SEGMENTD_REQUIRE_BROWSER=1 (CI), where its absence fails them. Screenshots of every view
go to SEGMENTD_CONSOLE_ARTIFACTS (default: target/console-screenshots in the checkout).
"""

import contextlib
import datetime as dt
import os
import pathlib
import re
import shutil
import time

import pytest

from segmentd.testing import free_port, local_server, server_binary

REPO = pathlib.Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "admin-token-console-0123456789"
READER_TOKEN = "reader-token-console-0123456789"


def pytest_configure(config):
    config.addinivalue_line("markers", "inject_scripts: the test injects scripts the page's CSP would block")


def _binary() -> str:
    return server_binary(REPO)


def _chromium() -> str:
    path = os.environ.get("SEGMENTD_CHROMIUM", "/usr/bin/chromium")
    if shutil.which(path):
        return path
    why = f"no Chromium at {path} (apt-get install chromium, or set SEGMENTD_CHROMIUM)"
    if os.environ.get("SEGMENTD_REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def artifacts() -> pathlib.Path:
    out = pathlib.Path(os.environ.get("SEGMENTD_CONSOLE_ARTIFACTS", REPO / "target" / "console-screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def demo_customers(n: int):
    for i in range(n):
        yield {
            "customer_id": f"C{i:04}",
            "email": f"c{i}@example.com",
            "attributes": {
                "gender": "F" if i % 2 == 0 else "M",
                "birth_date": dt.date(1950 + i % 50, 1 + i % 12, 1 + i % 28),
                "household_size": 1 + i % 5,
                "tags": ["golf"] if i % 10 == 0 else [],
                "registered_at": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
            },
        }


def demo_orders(n: int):
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for i in range(n):
        for k in range(i % 7):
            yield {
                "order_id": f"O{i}-{k}",
                "customer_id": f"C{i:04}",
                "placed_at": start + dt.timedelta(days=(i * 7 + k * 13) % 300),
                "amount_minor": 2_500 + (i * 3_719 + k * 911) % 60_000,
            }


@contextlib.contextmanager
def _server(tmp: pathlib.Path):
    tokens = tmp / "tokens"
    tokens.write_text(f"admin {ADMIN_TOKEN}\nreader {READER_TOKEN}\n")
    console = free_port()
    args = ["--console-addr", f"127.0.0.1:{console}", "--tokens-file", str(tokens), "--size-sample-secs", "1"]
    with local_server(_binary(), args, token=ADMIN_TOKEN) as server:
        yield server.client, f"http://127.0.0.1:{console}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A server with 2,000 customers, their orders, a few segments and the RFM family."""
    with _server(tmp_path_factory.mktemp("console")) as (client, url):
        client.load_customers(demo_customers(2000), batch_size=1000)
        client.record_orders(list(demo_orders(2000)))
        client.create_segment("good", name="Good customers", rule_text="total_spent > 1000")
        client.create_segment("men-over-40", name="Men over 40", rule_text='gender = "M" and age > 40')
        client.create_segment("golfers", name="Golfers", allow_activities=True, include_customer_ids=["C0001"])
        client.reclassify()
        # Two samples of every size, a second apart.
        time.sleep(2.2)
        yield client, url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, demo, artifacts, request):
    """A fresh tab (its own session storage) on a laptop-sized screen; fails the test on any
    error in the browser console, any uncaught exception, and any request leaving loopback."""
    _, url = demo
    # The accessibility checks inject axe-core, which the page's own policy rightly refuses.
    audit = request.node.get_closest_marker("inject_scripts") is not None
    context = browser.new_context(viewport={"width": 1366, "height": 800}, bypass_csp=audit)
    tab = context.new_page()
    problems = []
    tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    tab.on(
        "request",
        lambda r: problems.append(f"external request: {r.url}")
        if not r.url.startswith(("http://127.0.0.1:", "data:"))
        else None,
    )
    tab.console_url = url  # type: ignore[attr-defined]
    yield tab
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    tab.screenshot(path=str(artifacts / f"{name}-final.png"), full_page=True)
    context.close()
    assert not problems, "\n".join(problems)
