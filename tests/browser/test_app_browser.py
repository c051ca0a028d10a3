"""The demo page in a real headless Chromium: upload, type, search, results, plot, bad inputs,
the failure-case inspector, the rank-change views and the compare tab, at 1400 px and at 414 px
(a phone). Screenshots: test-artifacts/app-*.png.

Besides what a page must do, these check what a person sees: no plot label covers or is cut off
by another (bounding boxes from the DOM), no message shows a server path or an exception class,
user-supplied text is shown as text, the inspector never shows a stale query, and the K shown is
the K searched."""
import re
import tempfile

import pytest
from PIL import Image

pytestmark = pytest.mark.browser
TIMEOUT = 60_000
MESSAGES = ["#notice", "#failure-note", "#failure-detail", "#efficiency-note", "#rank-delta-note", "#compare-note",
            "#attention-note", "#pseudo-words", "[data-testid=toast-body]"]

# every visible text of a plot (titles, ticks, legend, annotations; not the hover label): pairs
# whose boxes overlap by more than a pixel each way, and texts that stick out of the plot's box
PLOT_TEXTS_JS = """(sel) => {
  const root = document.querySelector(sel);
  if (!root) return {n: 0, overlaps: [], clipped: [], error: 'no ' + sel};
  const box = root.getBoundingClientRect();
  const rects = [...root.querySelectorAll('svg text')]
    .filter(t => !t.closest('.hoverlayer') && t.textContent.trim() && t.getBoundingClientRect().width > 0)
    .map(t => { const r = t.getBoundingClientRect();
                return {t: t.textContent.trim(), x0: r.left, x1: r.right, y0: r.top, y1: r.bottom}; });
  const overlaps = [];
  for (let i = 0; i < rects.length; i++) for (let j = i + 1; j < rects.length; j++) {
    const a = rects[i], b = rects[j];
    const w = Math.min(a.x1, b.x1) - Math.max(a.x0, b.x0), h = Math.min(a.y1, b.y1) - Math.max(a.y0, b.y0);
    if (w > 1 && h > 1) overlaps.push([a.t, b.t]);
  }
  const clipped = rects.filter(r => r.x0 < box.left - 1 || r.x1 > box.right + 1).map(r => r.t);
  return {n: rects.length, overlaps, clipped, texts: rects.map(r => r.t)};
}"""

# a dropdown's text must end before its arrow: the input's content box stops left of the icon
DROPDOWNS_JS = """(ids) => ids.map(id => {
  const input = document.querySelector('#' + id + ' input[role=combobox]');
  const icon = document.querySelector('#' + id + ' .icon-wrap');
  if (!input) return [id, 'missing'];
  const r = input.getBoundingClientRect(), cs = getComputedStyle(input);
  const textEnd = r.right - parseFloat(cs.paddingRight);
  const clear = !icon || textEnd <= icon.getBoundingClientRect().left + 1;  // a disabled one has no arrow
  return [id, clear ? 'ok' : 'collides',
          input.scrollWidth <= input.clientWidth ? 'fits' : cs.textOverflow];
})"""

# a table column's header: visible in its table's box, or reachable by scrolling it sideways
HEADER_JS = """([sel, title]) => {
  const th = [...document.querySelectorAll(sel + ' th')].find(t => t.getAttribute('title') === title);
  const view = document.querySelector(sel + ' .virtual-table-viewport');
  if (!th || !view) return {found: false};
  const visible = () => { const a = th.getBoundingClientRect(), b = view.getBoundingClientRect();
                          return a.left >= b.left - 1 && a.right <= b.right + 1; };
  const out = {found: true, visible: visible(), scrolls: view.scrollWidth > view.clientWidth,
               hinted: !!view.closest('.isa-more-right')};
  view.scrollLeft = view.scrollWidth;
  out.reachable = visible();
  view.scrollLeft = 0;
  return out;
}"""


def _fill_modifier(page, text, prefix=""):
    box = page.locator(f"#{prefix}modifier textarea, #{prefix}modifier input").first
    box.fill(text)


def _notice(page):
    return page.locator("#notice").inner_text()


def _choose(page, elem_id, option):
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _type_k(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.click()
    box.press("Control+a")
    box.press("Backspace")
    box.type(value)


def _plot_ok(page, sel):
    """No two texts of the plot overlap and none is cut off by its box; returns the texts."""
    page.wait_for_selector(f"{sel} .js-plotly-plot .main-svg", timeout=TIMEOUT)
    page.wait_for_timeout(300)  # plotly lays the legend out after the first paint
    res = page.evaluate(PLOT_TEXTS_JS, sel)
    assert res["n"] > 3, res
    assert not res["overlaps"], f"{sel}: overlapping labels {res['overlaps']}"
    assert not res["clipped"], f"{sel}: labels cut off {res['clipped']}"
    return res["texts"]


def _no_server_paths(page, service, *more):
    """Every message on the page (notes, notices, toasts): no server path, no exception class."""
    forbidden = [tempfile.gettempdir() + "/", "/tmp/", "/root", "/home/", "/work/", "site-packages", "gradio_api",
                 str(service.inspector.results_dir), *map(str, more)]
    texts = [t for sel in MESSAGES for t in page.locator(sel).all_inner_texts()]
    for text in texts:
        assert not any(f in text for f in forbidden), text
        assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b", text), text
    return texts


def _search(page, *wait_for, changed=True):
    """Click Search; wait for a new notice (one holding any of ``wait_for``, when given) with the
    query done (no progress timer left in it); ``changed=False``: the notice may read as before."""
    before = page.evaluate("document.querySelector('#notice').innerText") if changed else None
    page.locator("#search").click()
    page.wait_for_function("([b, w]) => { const n = document.querySelector('#notice'); const t = n.innerText; "
                           "return t !== b && !n.querySelector('.eta-bar, .progress-text, .timer') && "
                           "!/\\d\\.\\ds/.test(t.split('\\n')[0]) && (!w.length || w.some(x => t.includes(x))); }",
                           arg=[before, list(wait_for)], timeout=TIMEOUT)
    return _notice(page)


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

    # the efficiency plot: no label covers another on either cost axis, human titles, the oracle said
    texts = _plot_ok(page, "#efficiency-plot")
    assert any("caption oracle: 60.0" in t for t in texts) and any("GFLOPs" in t for t in texts)
    page.locator("#cost").get_by_text("CPU latency (ms)").click()
    page.wait_for_function("[...document.querySelectorAll('#efficiency-plot svg text')]"
                           ".some(t => t.textContent.includes('CPU latency'))", timeout=TIMEOUT)
    texts = _plot_ok(page, "#efficiency-plot")
    assert not any(raw in t for t in texts for raw in ("cpu_ms_p50", "gflops")), texts
    # the table beside it: the parameter column visible at 1400 px, reachable (and said so) at 1024 px
    header = page.evaluate(HEADER_JS, ["#efficiency-table", "params (M)"])
    assert header["found"] and header["visible"], header
    page.set_viewport_size({"width": 1024, "height": 1000})
    page.wait_for_timeout(500)
    header = page.evaluate(HEADER_JS, ["#efficiency-table", "params (M)"])
    assert header["visible"] or (header["reachable"] and header["hinted"]), header
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.wait_for_timeout(500)
    # dropdown text never runs under its arrow
    assert all(r[1] == "ok" for r in page.evaluate(DROPDOWNS_JS, ["method", "backbone"])), \
        page.evaluate(DROPDOWNS_JS, ["method", "backbone"])

    # Top-K: each bad value gets its message and nothing is searched; the box shows the K searched
    for typed, said in [("0", "0 is too small"), ("-1", "-1 is too small"), ("1000000000", "is too large"),
                        ("7.5", "7.5 is not a whole number"), ("abc", "")]:
        _type_k(page, "topk", typed)
        message = _search(page, *([said] if said else ["top-K is empty", "is not a number"]))
        assert said in message and "from 1 to 50" in message, (typed, message)
        assert page.locator("#topk input[type=number]").input_value() == "10", typed
        assert page.locator("#results img").count() == 10
    _type_k(page, "topk", "7")
    assert "top 7 of" in _search(page, "top 7")
    page.wait_for_function("document.querySelectorAll('#results img').length == 7", timeout=TIMEOUT)
    assert page.locator("#topk input[type=number]").input_value() == "7"

    # a literal * stays a * in the shown prompt; the pseudo words are text, not byte-level stand-ins
    _fill_modifier(page, "make it **bold** * red")
    _search(page, changed=False)
    page.wait_for_function("document.querySelector('#pseudo-words').innerText.includes('bold')", timeout=TIMEOUT)
    words = page.locator("#pseudo-words").inner_text()
    assert "a photo of S that make it **bold** * red" in words and "SSbold" not in words
    assert not re.search("[ÃÂðŁĶ]", words), words

    # a method without attention maps says so instead of leaving the panel blank
    _choose(page, "method", "masked-ti")
    _fill_modifier(page, "make the circle red")
    _search(page, "masked-ti")
    page.wait_for_function("document.querySelector('#attention-note').innerText.includes('no attention maps')",
                           timeout=TIMEOUT)
    assert page.locator("#attention img").count() == 0
    page.screenshot(path=str(artifacts / "app-compose-masked.png"), full_page=True)
    _choose(page, "method", "isa")

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
    _no_server_paths(page, service, tmp_path)
    page.screenshot(path=str(artifacts / "app-bad-input.png"), full_page=True)

    # a file name that is Markdown is shown as text, in the notice and the toast
    evil = tmp_path / "[click me](evil.html).png"
    evil.write_bytes(b"not an image")
    page.locator("#reference button[aria-label='Remove Image']").first.click()
    page.locator("#reference input[type=file]").set_input_files(str(evil))
    message = _search(page, "click me")
    assert "[click me](evil.html).png" in message, message
    assert page.locator("#notice a").count() == 0 and page.locator("[data-testid=toast-body] a").count() == 0
    _no_server_paths(page, service, tmp_path)

    # an animated GIF: the preview shows the frame the search uses, and says so
    base = Image.open(example["image"]).convert("RGB")
    gif = tmp_path / "moving.gif"
    base.save(gif, save_all=True, append_images=[base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], duration=100,
              loop=0)
    page.locator("#reference button[aria-label='Remove Image']").first.click()
    page.locator("#reference input[type=file]").set_input_files(str(gif))
    page.wait_for_function("document.querySelector('#notice').innerText.includes('first frame')", timeout=TIMEOUT)
    page.wait_for_function("(() => { const i = document.querySelector('#reference img'); "
                           "return i && !i.src.endsWith('.gif'); })()", timeout=TIMEOUT)
    assert "first frame is shown and searched" in _search(page, "first frame")
    assert not errors, errors
    page.close()


def test_failure_inspector_and_compare(browser, app_url, artifacts):
    url, service = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load", timeout=TIMEOUT)
    page.wait_for_selector("#search", timeout=TIMEOUT)

    page.get_by_role("tab", name="Failure cases").click()
    # the default method (ISA) has no per-query table here: said without a server path
    page.wait_for_function("document.querySelector('#failure-note').innerText.includes('no per-query table')",
                           timeout=TIMEOUT)
    _no_server_paths(page, service)
    # pick the sum baseline (the fixture's per-query table) in the method dropdown
    _choose(page, "f-method", "sum")
    page.wait_for_function("document.querySelector('#failure-table') && "
                           "document.querySelector('#failure-table').innerText.includes('colour')", timeout=TIMEOUT)
    # headers break between words only ("quer y_id" is gone)
    lines = page.evaluate("[...document.querySelectorAll('#failure-table th span.header')].map(s => { "
                          "const r = document.createRange(); r.selectNodeContents(s); return [s.textContent.trim(), "
                          "new Set([...r.getClientRects()].map(x => Math.round(x.top))).size]; })")
    assert [t for t, _ in lines] == ["query", "change", "modifier", "GT rank", "subset rank"], lines
    assert all(n <= len(t.split()) for t, n in lines), lines
    page.locator("#failure-table [role=gridcell]").nth(2).click()  # a cell of the first row
    page.wait_for_selector("#inspector-top img", timeout=TIMEOUT)
    assert page.locator("#inspector-top img").count() >= 5
    detail = page.locator("#failure-detail").inner_text()
    qid = re.search(r"Query (\d+) under sum", detail).group(1)
    # the ground truth shown whole: contained, and inside its box
    fits = page.evaluate("[...document.querySelectorAll('#inspector-gt img')].map(i => { const r = "
                         "i.getBoundingClientRect(), b = i.closest('.grid-wrap').getBoundingClientRect(); return "
                         "getComputedStyle(i).objectFit === 'contain' && r.bottom <= b.bottom + 1 && r.right <= "
                         "b.right + 1; })")
    assert fits and all(fits), fits
    page.screenshot(path=str(artifacts / "app-failures.png"), full_page=True)

    # switching the method re-opens the inspected query under the new method (never a stale detail)
    rank_io = service.inspector.per_query("image-only")
    rank_io = int(rank_io.loc[rank_io["query_id"].astype(str) == qid, "rank"].iloc[0])
    _choose(page, "f-method", "image-only")
    page.wait_for_function("document.querySelector('#failure-detail').innerText.includes('under image-only')",
                           timeout=TIMEOUT)
    after = page.locator("#failure-detail").inner_text()
    assert after != detail and f"Query {qid} under image-only" in after
    assert f"ground truth first ranked {rank_io:,} of" in after, after
    # a filter that leaves the query out clears the detail and says so
    table = service.inspector.per_query("sum")
    mod_type = str(table.loc[table["query_id"].astype(str) == qid, "mod_type"].iloc[0]).split(":")[0]
    other = next(t for t in ("colour", "shape", "size", "position") if t != mod_type)
    _choose(page, "f-type", other)
    page.wait_for_function(f"document.querySelector('#failure-detail').innerText.includes('Query {qid} is not')",
                           timeout=TIMEOUT)
    assert page.locator("#inspector-top img").count() == 0
    _choose(page, "f-type", "all")

    # best first: the ground-truth mark is in the caption and never cut off
    page.locator("#f-order").get_by_text("best first").click()
    page.wait_for_function("document.querySelector('#failure-note').innerText.includes('best first')",
                           timeout=TIMEOUT)
    page.locator("#failure-table [role=gridcell]").nth(2).click()
    page.wait_for_function("document.querySelector('#inspector-top') && "
                           "document.querySelector('#inspector-top').innerText.includes('ground truth')",
                           timeout=TIMEOUT)
    marks = page.evaluate("[...document.querySelectorAll('#inspector-top .caption-label')]"
                          ".filter(c => c.innerText.includes('ground truth'))"
                          ".map(c => c.scrollWidth <= c.clientWidth + 1 && c.scrollHeight <= c.clientHeight + 1)")
    assert marks and all(marks), marks
    # Top-K shown: the slider's K is the number of results shown
    _type_k(page, "f-topk", "4")
    page.locator("#failure-note").click()  # leave the box
    page.wait_for_function("document.querySelectorAll('#inspector-top img').length == 4", timeout=TIMEOUT)

    # the rank change between two methods (image-only above, sum here): clicking a point opens it
    page.wait_for_selector("#rank-delta .js-plotly-plot .scatterlayer .point", timeout=TIMEOUT)
    page.wait_for_function("document.querySelector('#rank-delta-note').innerText.includes('higher under')",
                           timeout=TIMEOUT)
    _plot_ok(page, "#rank-delta")
    ids = set(page.evaluate("[].concat(...document.querySelector('#rank-delta .js-plotly-plot').data"
                            ".filter(t => t.customdata).map(t => t.customdata.map(c => c[0])))"))
    assert len(ids) == len(service.inspector.per_query("sum"))
    point = page.locator("#rank-delta .scatterlayer .point").nth(5)
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#rank-delta .hoverlayer .hovertext", timeout=TIMEOUT)
    hovered = page.evaluate("document.querySelector('#rank-delta .hoverlayer').textContent")
    hovered = re.search(r"query (\d+)", hovered).group(1)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(f"document.querySelector('#failure-detail').innerText.includes('Query {hovered} under')",
                           timeout=TIMEOUT)
    assert hovered in ids and "under sum)" in page.locator("#failure-detail").inner_text()
    page.screenshot(path=str(artifacts / "app-failures-rank-change.png"), full_page=True)
    _no_server_paths(page, service)

    page.get_by_role("tab", name="Compare").click()
    example = service.inspector.example_queries(1)[0]
    page.locator("#c-reference input[type=file]").set_input_files(example["image"])
    page.wait_for_selector("#c-reference img", timeout=TIMEOUT)
    page.locator("#c-modifier textarea, #c-modifier input").first.fill("remove the star")
    page.locator("#compare").click()
    page.wait_for_function("document.body.innerText.includes('of the top 10 are shared')", timeout=TIMEOUT)
    page.wait_for_function("document.querySelectorAll('#compare-a img').length >= 10 && "
                           "document.querySelectorAll('#compare-b img').length >= 10", timeout=TIMEOUT)
    # panels labelled by method and backbone; each result says where it ranks under the other
    assert "A: isa · mobilenetv3_small_100" in page.locator("#compare-a [data-testid=block-label]").inner_text()
    assert "B: sum" in page.locator("#compare-b [data-testid=block-label]").inner_text()
    assert re.search(r"#1 · -?[\d.]+ · B (#\d+|>\d+)", page.locator("#compare-a").inner_text())
    texts = _plot_ok(page, "#compare-moves")
    assert any("mobilenetv3_small_100" in t for t in texts)
    drops = page.evaluate(DROPDOWNS_JS, ["c-method-a", "c-backbone-a", "c-method-b", "c-backbone-b"])
    assert all(r[1] == "ok" for r in drops), drops
    _type_k(page, "c-topk", "0")
    page.locator("#compare").click()
    page.wait_for_function("document.querySelector('#compare-note').innerText.includes('0 is too small')",
                           timeout=TIMEOUT)
    assert page.locator("#c-topk input[type=number]").input_value() == "10"
    page.screenshot(path=str(artifacts / "app-compare.png"), full_page=True)
    _no_server_paths(page, service)
    assert not errors, errors
    page.close()


def test_phone_width(browser, app_url, artifacts):
    """414 px: every tab usable, nothing wider than the screen, plots whole, tables scroll visibly."""
    url, service = app_url
    example = service.inspector.example_queries(2)[1]
    page = browser.new_page(viewport={"width": 414, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load", timeout=TIMEOUT)
    page.wait_for_selector("#search", timeout=TIMEOUT)
    page.locator("#reference input[type=file]").set_input_files(example["image"])
    page.wait_for_selector("#reference img", timeout=TIMEOUT)
    _fill_modifier(page, "make the circle red")
    _search(page, "top 10")
    page.wait_for_function("document.querySelectorAll('#results img').length >= 10", timeout=TIMEOUT)
    wide = "document.documentElement.scrollWidth <= window.innerWidth + 1"
    assert page.evaluate(wide), page.evaluate("document.documentElement.scrollWidth")
    _plot_ok(page, "#efficiency-plot")
    header = page.evaluate(HEADER_JS, ["#efficiency-table", "params (M)"])
    assert header["visible"] or (header["reachable"] and header["hinted"]), header
    assert all(r[1] == "ok" for r in page.evaluate(DROPDOWNS_JS, ["method", "backbone"]))
    page.screenshot(path=str(artifacts / "app-414-compose.png"), full_page=True)

    page.get_by_role("tab", name="Failure cases").click()
    _choose(page, "f-method", "sum")
    page.wait_for_function("document.querySelector('#failure-table').innerText.includes('colour')", timeout=TIMEOUT)
    _choose(page, "f-method-2", "image-only")
    page.wait_for_function("document.querySelector('#rank-delta-note').innerText.includes('image-only')",
                           timeout=TIMEOUT)
    page.wait_for_selector("#rank-delta .js-plotly-plot .scatterlayer .point", timeout=TIMEOUT)
    _plot_ok(page, "#rank-delta")
    header = page.evaluate(HEADER_JS, ["#failure-table", "subset rank"])
    assert header["visible"] or (header["reachable"] and header["hinted"]), header
    page.locator("#failure-table [role=gridcell]").nth(1).click()
    page.wait_for_selector("#inspector-top img", timeout=TIMEOUT)
    assert page.evaluate(wide)
    page.screenshot(path=str(artifacts / "app-414-failures.png"), full_page=True)

    page.get_by_role("tab", name="Compare").click()
    page.locator("#c-reference input[type=file]").set_input_files(example["image"])
    page.wait_for_selector("#c-reference img", timeout=TIMEOUT)
    page.locator("#c-modifier textarea, #c-modifier input").first.fill("remove the star")
    page.locator("#compare").click()
    page.wait_for_function("document.querySelectorAll('#compare-b img').length >= 10", timeout=TIMEOUT)
    _plot_ok(page, "#compare-moves")
    assert page.evaluate(wide)
    page.screenshot(path=str(artifacts / "app-414-compare.png"), full_page=True)
    _no_server_paths(page, service)
    assert not errors, errors
    page.close()
