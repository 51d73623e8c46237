"""The console's views driven in Chromium, each checked against the server's own answers."""

import os
import pathlib
import re

import pytest
from playwright.sync_api import expect

from conftest import ADMIN_TOKEN, READER_TOKEN
from segmentd import SegmentdError


def log_in(page, token=ADMIN_TOKEN, view="segments"):
    page.goto(f"{page.console_url}/#{view}")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Connect").click()
    expect(page.locator("#login-status")).to_have_text(re.compile("^Connected"))


def test_a_wrong_token_is_refused_and_the_right_one_connects(page, demo):
    page.goto(page.console_url)
    page.get_by_label("Token").fill("not-a-token")
    page.get_by_label("Token").press("Enter")
    expect(page.locator("#login-status")).to_contain_text("Not signed in")
    log_in(page)
    # Kept for the tab only: a reload keeps it, a new tab does not.
    page.reload()
    expect(page.get_by_label("Token")).to_have_value(ADMIN_TOKEN)
    expect(page.locator("#login-status")).to_have_text(re.compile("^Connected"))


def test_segments_view_lists_each_segment_with_the_size_get_segment_reports(page, demo, artifacts):
    client, _ = demo
    log_in(page)
    listed = client.list_segments()
    assert len(listed) > 10  # the demo's segments and the RFM family's members
    rows = page.locator("table.segments tbody tr[data-segment-id]")
    expect(rows).to_have_count(len(listed))
    for s in listed:
        size = client.get_segment(s.segment_id).size
        row = page.locator(f'tr[data-segment-id="{s.segment_id}"]')
        expect(row.locator("td[data-size]")).to_have_attribute("data-size", str(size))
    expect(page.locator('tr[data-segment-id="good"] td').nth(1)).to_have_text("rule")
    expect(page.locator('tr[data-segment-id="golfers"] td').nth(1)).to_have_text("container")
    expect(page.locator('tr[data-segment-id="rfm.champions"] td').nth(1)).to_have_text("family member (rfm)")
    # Sampled every second by this server: a line, not "not sampled yet".
    expect(page.locator('tr[data-segment-id="good"] svg.spark')).to_be_visible()

    # Filter, then sort by size (largest first).
    page.get_by_label("Filter").fill("rfm.")
    expect(rows).to_have_count(sum(1 for s in listed if "rfm." in s.segment_id))
    page.get_by_role("button", name="Size").click()
    sizes = [int(v) for v in rows.locator("td[data-size]").evaluate_all("els => els.map(e => e.dataset.size)")]
    assert sizes == sorted(sizes, reverse=True)
    page.get_by_label("Filter").fill("")
    page.screenshot(path=str(artifacts / "segments.png"), full_page=True)


def test_rule_editor_previews_as_you_type_underlines_errors_and_saves(page, demo, artifacts):
    client, _ = demo
    log_in(page, view="editor")
    page.get_by_label("Segment id").fill("big-spenders")
    page.get_by_label("Name").fill("Big spenders")
    rule = page.get_by_label("Rule", exact=True)

    rule.press_sequentially('total_spent > 500 and gender = "F"', delay=5)
    expected, matching = client.preview_segment('total_spent > 500 and gender = "F"', sample_size=1000)
    expect(page.locator("#preview-count")).to_have_attribute("data-count", str(expected))
    expect(page.locator("ul.sample li")).to_have_count(min(expected, 20))

    # A parse error: the position the server reports, underlined in the box.
    bad = 'total_spent > 500 and\ngender = '
    rule.fill(bad)
    with pytest.raises(SegmentdError) as e:
        client.preview_segment(bad)
    line, column = map(int, re.search(r"line (\d+), column (\d+)", str(e.value)).groups())
    error = page.locator("#rule-error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("data-line", str(line))
    expect(error).to_have_attribute("data-column", str(column))
    expect(error).to_contain_text(f"Line {line}, column {column}")
    expect(rule).to_have_attribute("aria-invalid", "true")
    expect(page.locator("mark.squiggle")).to_have_count(1)
    page.screenshot(path=str(artifacts / "rule-editor-error.png"), full_page=True)

    rule.fill('total_spent > 500 and\ngender = "F"')
    expect(page.locator("#preview-count")).to_have_attribute("data-count", str(expected))
    expect(page.locator("mark.squiggle")).to_have_count(0)
    page.get_by_label("Include customers").fill("C0003")
    page.get_by_role("button", name="Create segment").click()
    expect(page.get_by_role("status").filter(has_text="Saved big-spenders")).to_be_visible()
    saved = client.get_segment("big-spenders")
    assert saved.name == "Big spenders"
    assert list(saved.include_customer_ids) == ["C0003"]
    assert saved.size == expected + (0 if "C0003" in matching else 1)
    page.screenshot(path=str(artifacts / "rule-editor.png"), full_page=True)

    # Saving again updates it.
    page.get_by_label("Name").fill("Big spenders (women)")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status").filter(has_text="Saved big-spenders")).to_be_visible()
    assert client.get_segment("big-spenders").name == "Big spenders (women)"


def test_an_add_to_segment_call_shows_up_in_the_live_view(page, demo, artifacts):
    client, _ = demo
    log_in(page, view="live")
    expect(page.locator("#live-position")).not_to_be_empty()
    client.add_to_segment("golfers", ["C0042"], activity_id="console-test")
    row = page.locator('tr[data-segment-id="golfers"][data-customer-id="C0042"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("entered")
    expect(row).to_contain_text("activity (console-test)")
    page.screenshot(path=str(artifacts / "live.png"), full_page=True)

    # Filtered to one segment: another segment's change does not show, this one's does.
    page.get_by_role("button", name="Stop").click()
    page.get_by_label("Segments").fill("golfers")
    page.get_by_label("From sequence").fill("")
    page.get_by_role("button", name="Watch").click()
    expect(page.get_by_role("status").filter(has_text="Watching")).to_be_visible()
    expect(page.locator("#live-position")).not_to_be_empty()
    client.create_segment("watched-elsewhere", rule_text='gender = "F" and household_size = 2')
    client.remove_from_segment("golfers", ["C0042"], activity_id="console-test")
    left = page.locator('tr.left[data-customer-id="C0042"]')
    expect(left).to_be_visible()
    expect(page.locator('tr[data-segment-id="watched-elsewhere"]')).to_have_count(0)


def test_overlap_heatmap_matches_segment_overlap(page, demo, artifacts):
    client, _ = demo
    ids = ["good", "men-over-40", "golfers"]
    log_in(page, view="overlap?ids=" + ",".join(ids))
    overlaps = client.segment_overlap(ids)
    cells = page.locator("table.heatmap tbody td")
    expect(cells).to_have_count(9)
    for i, a in enumerate(ids):
        for j, b in enumerate(ids):
            n = overlaps.get((a, b), overlaps.get((b, a)))
            expect(cells.nth(i * 3 + j)).to_have_attribute("data-count", str(n))
    page.screenshot(path=str(artifacts / "overlap.png"), full_page=True)


def test_rfm_grid_counts_every_scored_customer_once(page, demo, artifacts):
    client, _ = demo
    log_in(page, view="rfm")
    cells = page.locator("table.rfm tbody td")
    expect(cells).to_have_count(25)
    counts = cells.evaluate_all("els => els.map(e => Number(e.title.split(': ')[1].replace(/,/g, '')))")
    r5f5, _ = client.preview_segment("rfm_r = 5 and rfm_f = 5")
    assert int(page.locator('td[data-r="5"][data-f="5"]').inner_text().replace(",", "")) == r5f5
    scored, _ = client.preview_segment("rfm_r >= 1")
    assert sum(counts) == scored > 0
    # The first reclassification placed every customer: its moves say so.
    expect(page.locator("table.moves tbody tr").first).to_be_visible()
    page.screenshot(path=str(artifacts / "rfm.png"), full_page=True)


def test_customer_view_explains_each_membership_and_hides_attributes_from_readers(page, demo, artifacts):
    client, _ = demo
    log_in(page, view="customer?id=C0001")
    segments = client.get_customer_segments("C0001")
    items = page.locator("ul.memberships > li")
    expect(items).to_have_count(len(segments))
    golfers = page.locator('li[data-segment-id="golfers"]')
    expect(golfers).to_contain_text("Member: included customer")
    expect(page.locator("table.attributes")).to_contain_text("c1@example.com")
    page.screenshot(path=str(artifacts / "customer.png"), full_page=True)

    # Why not in `good`: the predicate and the customer's value.
    page.get_by_label("Why not in").select_option("good")
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("table.explain").last).to_contain_text("total_spent > 1000")

    # A reader sees the segments, not the attributes.
    log_in(page, token=READER_TOKEN, view="customer?id=C0001")
    expect(page.locator("ul.memberships > li")).to_have_count(len(segments))
    expect(page.get_by_text("Attributes are shown to loader and admin tokens.")).to_be_visible()


def test_views_are_reachable_by_keyboard(page, demo):
    log_in(page)
    page.locator("#token").focus()
    # Token, Connect, then the tabs in order.
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Segments")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile("#editor$"))
    expect(page.get_by_role("heading", name="Rule editor")).to_be_visible()


VIEWS = {
    "segments": "table.segments tbody tr",
    "editor?id=good": "#preview-count[data-count]",
    "overlap?ids=good,men-over-40,golfers": "table.heatmap tbody td",
    "rfm": "table.rfm tbody td",
    "customer?id=C0001": "table.attributes",
    "live": "#live-position:not(:empty)",
}


@pytest.mark.inject_scripts
@pytest.mark.parametrize("view", list(VIEWS))
def test_every_view_passes_the_accessibility_checks(page, demo, view):
    """axe-core's WCAG 2 A and AA rules (labels, names, contrast, structure) on each view."""
    axe = pathlib.Path(__file__).resolve().parents[1] / "node_modules" / "axe-core" / "axe.min.js"
    if not axe.exists():
        why = f"no {axe}: run `npm ci` in clients/console"
        if os.environ.get("SEGMENTD_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    log_in(page, view=view)
    expect(page.locator(VIEWS[view]).first).to_be_attached()
    page.add_script_tag(path=str(axe))
    found = page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}))"
        ".violations.map(v => `${v.id} (${v.impact}): ${v.help}: ${v.nodes.map(n => n.target.join(' ')).slice(0, 5).join(', ')}`)"
    )
    assert not found, "\n".join(found)
