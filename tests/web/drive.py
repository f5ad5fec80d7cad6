"""Drives sympathy's web page in headless Chromium and checks what the page promises.

Run by tests/web.rs (which installs Chromium and Playwright, trains or picks a model and
starts `sympathy serve`):  python drive.py BASE_URL RUN_DIR SHOT_DIR
Every check raises AssertionError with what was expected and what was seen; the last
line printed is a JSON object of measurements.
"""
import json
import math
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

BASE, RUN_DIR, SHOTS = sys.argv[1], sys.argv[2], sys.argv[3]
HOST = urllib.parse.urlsplit(BASE).netloc
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]
PROMPT = "def squares(n):\n    return [x"
MAX_TOKENS = 120
results = {}


def post(path, body):
    req = urllib.request.Request(BASE + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def get(path):
    with urllib.request.urlopen(BASE + path, timeout=60) as r:
        return json.load(r)


def greedy_url(prompt, max_tokens=MAX_TOKENS):
    q = urllib.parse.urlencode({"prompt": prompt, "temperature": 0, "max_tokens": max_tokens, "seed": 7})
    return f"{BASE}/?{q}"


def tokens(page):
    """(text, prob, id) of every generated token element, in order."""
    return page.eval_on_selector_all(
        "[data-testid=completion] [data-testid=token]",
        "els => els.map(e => [e.textContent, Number(e.dataset.prob), e.dataset.tokenId === undefined ? null : Number(e.dataset.tokenId)])")


def wait_done(page):
    page.wait_for_selector("[data-testid=completion][data-done=true]", timeout=60000)


# Counts the token elements added per DOM mutation batch, to see them arrive one by one.
ARRIVALS = """
window.__arrivals = [];
new MutationObserver((records) => {
  const n = records.reduce((s, r) => s + [...r.addedNodes].filter((x) => x.dataset && x.dataset.testid === 'token').length, 0);
  if (n) window.__arrivals.push([performance.now(), n]);
}).observe(document, { childList: true, subtree: true });
"""


def check_playground(page, ctx):
    started = time.monotonic()
    page.goto(greedy_url(PROMPT))
    page.wait_for_selector("body[data-ready=true]", timeout=10000)
    results["page_usable_ms"] = float(page.get_attribute("body", "data-ready-ms"))
    wait_done(page)
    got = tokens(page)
    assert len(got) > 1, f"no streamed tokens: {got}"
    api = post("/v1/completions", {"prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS, "seed": 7})
    api_text = api["choices"][0]["text"]
    page_text = "".join(t for t, _, _ in got)
    assert page_text == api_text, f"page text {page_text!r} != API text {api_text!r}"
    assert page.get_attribute("[data-testid=completion]", "data-text") == api_text
    check_token_by_token(page, ctx, got)
    vocab = {v["text"]: v["id"] for v in reversed(get("/v1/web/info")["vocab"])}
    for text, prob, tid in got:
        assert 0 < prob <= 1, f"token {text!r} has data-prob {prob}"
        assert tid == vocab[text], f"token {text!r} has data-token-id {tid}, vocabulary says {vocab[text]}"
    # Greedy: every token is its position's first choice, so its probability tops the list.
    page.hover("[data-testid=completion] [data-testid=token] >> nth=2")
    page.wait_for_selector("[data-testid=alternatives]:visible")
    alts = page.eval_on_selector_all("[data-testid=alternative]",
                                     "els => els.map(e => [e.dataset.token, Number(e.dataset.prob)])")
    assert len(alts) >= 2, f"hover shows {alts}"
    assert alts[0][0] == got[2][0], f"greedy token {got[2][0]!r} is not the top alternative {alts}"
    assert abs(alts[0][1] - got[2][1]) <= 1e-5 * max(1, got[2][1]), (alts[0], got[2])
    results["playground_ms"] = round((time.monotonic() - started) * 1000)
    return got, api_text


def check_token_by_token(page, ctx, got):
    """The server sends one event per token, and the page shows each as it comes: with
    the download throttled (so that a fast server's events cannot all land in one read),
    the tokens appear over many DOM updates and still add up to the same text."""
    body = {"prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS, "seed": 7, "stream": True, "logprobs": 5}
    req = urllib.request.Request(BASE + "/v1/completions", json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        events = [e[6:] for e in r.read().decode().split("\n\n") if e.startswith("data: {")]
    per_event = [len((json.loads(e)["choices"][0].get("logprobs") or {}).get("tokens") or []) for e in events]
    assert max(per_event) == 1 and sum(per_event) == len(got), f"tokens per event: {per_event}"
    cdp = ctx.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 0, "downloadThroughput": 16384, "uploadThroughput": -1})
    page.evaluate("window.__arrivals = []")
    page.click("[data-testid=run]")
    wait_done(page)
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    arrivals = page.evaluate("window.__arrivals")
    assert len(arrivals) >= 5, f"the {len(got)} tokens arrived in {len(arrivals)} updates: {arrivals}"
    again = tokens(page)
    assert [t for t, _, _ in again] == [t for t, _, _ in got], "the throttled run gave another text"
    results["arrival_batches"] = len(arrivals)


def check_branch(page, got):
    """Click the second alternative of token 2: a new branch starting with it."""
    alt_text = page.get_attribute("[data-testid=alternative] >> nth=1", "data-token")
    page.click("[data-testid=alternative] >> nth=1")
    wait_done(page)
    branch = tokens(page)
    assert [t for t, _, _ in branch[:2]] == [t for t, _, _ in got[:2]], "the branch changed the tokens before it"
    assert branch[2][0] == alt_text != got[2][0], f"branch token {branch[2]} is not the clicked {alt_text!r}"
    buttons = page.locator("[data-testid=branch]")
    assert buttons.count() == 2, f"{buttons.count()} branch buttons"
    buttons.nth(0).click()
    back = tokens(page)
    assert "".join(t for t, _, _ in back) == "".join(t for t, _, _ in got), "the first branch was not kept"
    buttons.nth(1).click()


def check_shared_url(ctx, api_text):
    page = ctx.new_page()
    page.goto(greedy_url(PROMPT))
    wait_done(page)
    text = "".join(t for t, _, _ in tokens(page))
    assert text == api_text, f"the shared link gave {text!r}, expected {api_text!r}"
    page.close()


def check_first_token_latency(ctx):
    page = ctx.new_page()
    page.goto(f"{BASE}/?" + urllib.parse.urlencode({"prompt": PROMPT, "temperature": 0, "max_tokens": 8}))
    wait_done(page)
    times = []
    for _ in range(5):
        page.click("[data-testid=run]")
        wait_done(page)
        times.append(float(page.get_attribute("[data-testid=speed]", "data-first-token-ms")))
    results["first_token_ms"] = sorted(times)
    page.close()


def check_inside(page):
    page.click("nav button[data-view=inside]")
    page.wait_for_selector("[data-testid=view-inside][data-ready=true]", timeout=60000)
    info = get("/v1/web/info")
    text = page.evaluate("document.querySelector('[data-testid=completion]').textContent")
    view = post("/v1/explain", {"prompt": text, "top_k": 5})
    n_maps = view["n_layer"] * view["n_head"]
    maps = page.locator("[data-testid=heatmap]")
    assert maps.count() == n_maps, f"{maps.count()} heat maps for {view['n_layer']} layers x {view['n_head']} heads"
    # Query 0 can only attend to itself (weight 1): the top-left pixel of every head is
    # viridis(1), and each map has more than one colour in its lower triangle.
    stats = page.eval_on_selector_all("[data-testid=heatmap]", """els => els.map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const colours = new Set();
        for (let i = 0; i < d.length; i += 4) colours.add(d[i] * 65536 + d[i + 1] * 256 + d[i + 2]);
        return [c.width, Array.from(d.slice(0, 3)), colours.size];
    })""")
    for w, first, colours in stats:
        assert w == len(view["tokens"]), f"map width {w} for {len(view['tokens'])} tokens"
        assert first == [253, 231, 37], f"pixel (0, 0) is {first}, expected viridis(1)"
        assert colours > 2, f"a map has only {colours} colours"
    for layer in view["attention"]:
        for head in layer:
            for t, row in enumerate(head):
                assert len(row) == t + 1 and abs(sum(row) - 1) <= 5e-5 * (t + 1) + 1e-6, (t, sum(row))
    out = view["lens"][-1]["positions"]
    assert [p[0]["token"] for p in out] == [p["top"][0]["token"] for p in view["positions"]], \
        "the lens's last stage differs from the model's output"
    assert len(view["lens"]) == view["n_layer"] + 1
    # Hovering token 3 dims the other rows in every head (row 0's pixel changes).
    page.hover("[data-testid=inside-tokens] .tok >> nth=3")
    dimmed = page.eval_on_selector_all("[data-testid=heatmap]",
                                       "els => els.map(c => Array.from(c.getContext('2d').getImageData(0, 0, 1, 1).data.slice(0, 3)))")
    assert all(p != [253, 231, 37] for p in dimmed), f"hover did not reach every head: {dimmed}"
    page.mouse.move(0, 0)
    cells = page.locator("[data-testid=topk] td[data-prob]").count()
    assert cells >= 5 * len(view["positions"]), f"{cells} top-k cells"
    results["inside_tokens"] = len(view["tokens"])
    results["vocab_size"] = len(info["vocab"])
    assert not page.is_visible("[data-testid=attention-big]")
    page.click("[data-testid=heatmap] >> nth=1")
    assert page.is_visible("[data-testid=attention-big]"), "clicking a map did not enlarge it"
    assert page.get_attribute("#attention-big-canvas", "data-head") == "1"
    page.click("#attention-big-close")
    assert not page.is_visible("[data-testid=attention-big]"), "the enlarged map did not close"


def check_non_ascii(ctx):
    page = ctx.new_page()
    page.goto(f"{BASE}/?" + urllib.parse.urlencode({"prompt": "café = 1\n", "view": "inside"}))
    page.wait_for_selector("[data-testid=view-inside][data-ready=true]", timeout=60000)
    toks = page.eval_on_selector_all("[data-testid=inside-tokens] .tok",
                                     "els => els.map(e => [e.textContent, e.dataset.tokenId])")
    assert toks[3][0] == "\ufffd", f"'é' is shown as {toks[3]}, not as the <unk> it became"
    summary = page.inner_text("[data-testid=explain-summary]")
    assert "<unk>" in summary, f"no note about <unk> in {summary!r}"
    page.close()


def check_error(ctx):
    page = ctx.new_page()
    page.goto(f"{BASE}/?" + urllib.parse.urlencode({"prompt": "x", "max_tokens": 10**7}))
    page.wait_for_selector("[data-testid=error]:visible", timeout=20000)
    msg = page.inner_text("[data-testid=error]")
    assert "max_tokens" in msg and "400" in msg, f"error shown: {msg!r}"
    page.close()


def check_dashboard(page):
    page.click("nav button[data-view=training]")
    with open(f"{RUN_DIR}/metrics.jsonl") as f:
        lines = [json.loads(l) for l in f if l.strip()]
    n = len({r["step"] for r in lines})
    page.wait_for_selector(f"[data-testid=run-points][data-count='{n}']", timeout=20000)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=f"{SHOTS}/web-dashboard.png")
    last = lines[-1]
    extra = dict(last, step=last["step"] + 1, loss=last["loss"] * 0.9)
    with open(f"{RUN_DIR}/metrics.jsonl", "a") as f:
        f.write(json.dumps(extra) + "\n")
    t0 = time.monotonic()
    page.wait_for_selector(f"[data-testid=run-points][data-count='{n + 1}']", timeout=10000)
    results["dashboard_new_point_ms"] = round((time.monotonic() - t0) * 1000)
    inspect = page.inner_text("[data-testid=run-inspect]")
    assert "wte.weight" in inspect and '"n_embd"' in inspect, f"no inspect summary and config: {inspect[:300]!r}"
    page.click("[data-testid=compare-run]")
    page.wait_for_selector("[data-testid=compare-summary]", timeout=60000)
    summary = page.inner_text("[data-testid=compare-summary]")
    assert "differs at" in summary, summary


def check_reload(page):
    page.click("nav button[data-view=training]")
    page.click("[data-testid=load-latest]")
    page.wait_for_selector("[data-testid=load-status][data-loaded]", state="attached", timeout=60000)
    status = page.inner_text("[data-testid=load-status]")
    assert status.startswith("loaded") and "ckpt-latest" in status, status
    # The button brings the playground back, talking to the model just loaded.
    page.wait_for_selector("[data-testid=view-playground]:visible")
    page.click("[data-testid=run]")
    wait_done(page)
    api = post("/v1/completions", {"prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS, "seed": 7})
    text = "".join(t for t, _, _ in tokens(page))
    assert text == api["choices"][0]["text"], f"after the reload the page gave {text!r}"


def main():
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="sympathy-chromium-"), executable_path="/usr/bin/chromium",
            headless=True, args=FLAGS, viewport={"width": 1280, "height": 800})
        outside = []
        ctx.on("request", lambda r: urllib.parse.urlsplit(r.url).netloc != HOST and outside.append(r.url))
        ctx.add_init_script(ARRIVALS)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        got, api_text = check_playground(page, ctx)
        check_branch(page, got)
        page.mouse.move(0, 0)
        page.screenshot(path=f"{SHOTS}/web-playground.png")
        check_inside(page)
        page.screenshot(path=f"{SHOTS}/web-inside.png")
        check_dashboard(page)
        check_reload(page)
        check_shared_url(ctx, api_text)
        check_non_ascii(ctx)
        check_error(ctx)
        check_first_token_latency(ctx)
        assert not outside, f"requests to other hosts: {outside}"
        ctx.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
