"""The demo page in a real headless Chromium: upload, type, search, results, plot, bad inputs,
the failure-case inspector and the compare tab. Screenshots: test-artifacts/app-*.png."""
import pytest

pytestmark = pytest.mark.browser
TIMEOUT = 60_000


def _fill_modifier(page, text):
    box = page.locator("#modifier textarea, #modifier input").first
    box.fill(text)


def _notice(page):
    return page.locator("#notice").inner_text()


def test_compose_page_end_to_end(browser, app_url, artifacts, tmp_path):
    url, service = app_url
    example = service.inspector.example_queries(2)[1]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load", timeout=TIMEOUT)
    page.wait_for_selector("#search", timeout=TIMEOUT)
    # the plot is drawn on load (from the results tables)
    page.wait_for_selector("#efficiency-plot .js-plotly-plot .main-svg", timeout=TIMEOUT)
    page.screenshot(path=str(artifacts / "app-initial.png"), full_page=True)

    # upload a reference, type a modifier, search
    page.locator("#reference input[type=file]").set_input_files(example["image"])
    page.wait_for_selector("#reference img", timeout=TIMEOUT)
    _fill_modifier(page, "make the circle red")
    page.locator("#search").click()
    page.wait_for_selector("#results img", timeout=TIMEOUT)
    page.wait_for_function("document.querySelector('#timings') && "
                           "document.querySelector('#timings').innerText.includes('total')", timeout=TIMEOUT)
    page.wait_for_function("document.querySelectorAll('#results img').length >= 10 && "
                           "[...document.querySelectorAll('#results img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=TIMEOUT)
    assert page.locator("#results img").count() >= 10
    assert "#1 ·" in page.locator("#results").inner_text()
    assert page.locator("#attention img").count() == 3  # one heatmap per pseudo token
    assert "nearest vocabulary words" in page.locator("#pseudo-words").inner_text()
    timings = page.locator("#timings").inner_text()
    assert "query image encoder" in timings and "text encoder" in timings and "gallery search" in timings
    assert page.locator("#efficiency-plot .js-plotly-plot .scatterlayer .point").count() >= 3
    assert "mobilenetv3_small_100" in page.locator("#efficiency-note").inner_text()
    page.screenshot(path=str(artifacts / "app-compose.png"), full_page=True)

    # bad input: whitespace modifier -> a clear message, no stack trace
    _fill_modifier(page, "    ")
    page.locator("#search").click()
    page.wait_for_function("document.querySelector('#notice').innerText.includes('modifier text is empty')",
                           timeout=TIMEOUT)
    assert "Traceback" not in page.content()

    # bad input: a truncated file
    bad = tmp_path / "broken.png"
    bad.write_bytes(open(example["image"], "rb").read()[:150])
    page.locator("#reference button[aria-label='Remove Image']").first.click()
    page.locator("#reference input[type=file]").set_input_files(str(bad))
    _fill_modifier(page, "make the circle red")
    page.locator("#search").click()
    page.wait_for_function("document.querySelector('#notice').innerText.includes('cannot be used')", timeout=TIMEOUT)
    assert "not a readable image" in _notice(page)
    page.screenshot(path=str(artifacts / "app-bad-input.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_failure_inspector_and_compare(browser, app_url, artifacts):
    url, service = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="load", timeout=TIMEOUT)
    page.wait_for_selector("#search", timeout=TIMEOUT)

    page.get_by_role("tab", name="Failure cases").click()
    # pick the sum baseline (the fixture's per-query table) in the method dropdown
    page.locator("#f-method input").click()
    page.get_by_role("option", name="sum", exact=True).click()
    page.wait_for_function("document.querySelector('#failure-table') && "
                           "document.querySelector('#failure-table').innerText.includes('colour')", timeout=TIMEOUT)
    page.locator("#failure-table [role=gridcell]").nth(2).click()  # a cell of the first row
    page.wait_for_selector("#inspector-top img", timeout=TIMEOUT)
    assert page.locator("#inspector-top img").count() >= 5
    page.screenshot(path=str(artifacts / "app-failures.png"), full_page=True)

    page.get_by_role("tab", name="Compare").click()
    example = service.inspector.example_queries(1)[0]
    page.locator("#c-reference input[type=file]").set_input_files(example["image"])
    page.wait_for_selector("#c-reference img", timeout=TIMEOUT)
    page.locator("#c-modifier textarea, #c-modifier input").first.fill("remove the star")
    page.locator("#compare").click()
    page.wait_for_function("document.body.innerText.includes('of the top 10 are shared')", timeout=TIMEOUT)
    page.wait_for_function("document.querySelectorAll('#compare-a img').length >= 10 && "
                           "document.querySelectorAll('#compare-b img').length >= 10", timeout=TIMEOUT)
    page.screenshot(path=str(artifacts / "app-compare.png"), full_page=True)
    page.close()
