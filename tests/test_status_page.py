"""The status page (`/` on the admin port) in a real browser: headless Chromium (Debian's
`chromium`, driven by Playwright) loads it from a running 3-node gossip cluster, and the test
checks what it shows against the cluster: every member alive, this node's figures, the hottest
object, a write at durability `local` pending while the origin refuses it and uploaded once the
origin takes it, a killed node shown as suspect or dead and unreachable, and no request leaving the
node (the page has no external assets). Screenshots are kept in the directory the test prints
($CAIRN_ARTIFACTS, or tests/artifacts/)."""

import json
import os
import pathlib
import re
import shutil
import signal
import time

import pytest
import requests

from conftest import payload
from test_cluster import Cluster
from test_gossip import all_alive, ids, wait_for
from test_writeback import with_durability

MIB = 1024 * 1024
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
WB = '[writeback]\nretry_min = "100ms"\nretry_max = "500ms"\nupload_defer = "0s"\ndrain_timeout = "1s"\n'


def artifacts_dir(name):
    base = pathlib.Path(os.environ.get("CAIRN_ARTIFACTS") or pathlib.Path(__file__).parent / "artifacts")
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {d}")
    return d


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: run `cargo xtask deps`")
    if not pathlib.Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: run `cargo xtask deps` (Debian package chromium)")
    with sync_api.sync_playwright() as p:
        # Debian's Chromium, not a browser Playwright downloads; no sandbox as root in a container.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def cluster(tmp_path, origin_proxy):
    c = Cluster(tmp_path, 3, gossip=True, chunk=MIB, origin=origin_proxy.origin(), more_sections=WB)
    yield c
    c.stop(signal.SIGKILL)


def admin(node):
    return f"http://{node.host}:{node.admin_port}"


def text(page, selector):
    return page.locator(selector).inner_text().strip()


def raw(page, selector):
    """The text as written, not as styled (headings are upper-cased by CSS)."""
    return (page.locator(selector).text_content() or "").strip()


def wait_page(page, what, check, timeout):
    """Waits for the page (refreshing itself) to show `check`; fails with what it showed last."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # an element not rendered yet
            last = e
        page.wait_for_timeout(250)
    pytest.fail(f"page never showed {what}; last: {last!r}")


def test_status_page_shows_the_cluster_writes_and_a_killed_node(cluster, origin_proxy, browser, prefix):
    c = cluster
    shots = artifacts_dir("status_page")
    wait_for("3 alive", lambda: all_alive(c.nodes, ids(c)), 15)
    n0, n1, n2 = c.nodes
    body = payload(3 * MIB + 17, seed=5)
    key = f"{prefix}weights.bin"
    c.origin.put_direct(key, body)
    s3 = n0.s3()
    for _ in range(2):
        assert s3.get_object(Bucket="data", Key=key)["Body"].read() == body
    assert n1.s3().get_object(Bucket="data", Key=key)["Body"].read() == body

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    script_errors = []
    page.on("pageerror", lambda e: script_errors.append(str(e)))
    page.goto(admin(n0) + "/")
    assert page.title() == "cairn status"

    # The pool at a glance: three alive members, counted from n0's own view; each sampled.
    wait_page(page, "3 alive", lambda: text(page, "#count-alive b") == "3", 15)
    assert text(page, "#served-by") == "n0"
    assert "gossip" in text(page, "#mode") and "3 members" in text(page, "#mode")
    assert text(page, "#attention") == "every member is alive"
    rows = page.locator("#details tr")
    assert sorted(rows.nth(i).get_attribute("data-member") for i in range(rows.count())) == ["n0", "n1", "n2"]
    assert page.locator("#details tr.unreachable").count() == 0
    assert "z1" in text(page, "#zones") and text(page, "#zones").count("\n") == 0  # one zone
    racks = text(page, "#racks")
    assert "r0" in racks and "r1" in racks

    # This node: the object served twice is the hottest, its bytes as the node counted them.
    report = requests.get(admin(n0) + "/v1/node", timeout=5).json()
    assert report["node"] == "n0" and report["bytes_served"] == 2 * len(body)
    assert report["hot"][0] == {"bucket": "data", "key": key, "bytes": 2 * len(body), "error": 0}
    assert report["tiers"]["ram_capacity"] == 64 * MIB and report["tiers"]["disk_capacity"] == 1024 * MIB
    wait_page(page, "the hot object", lambda: key in text(page, "#hot"), 10)
    assert "6.00 MiB" in text(page, "#hot")
    # Across the sample: 9 MiB of it served, by n0 and n1.
    hot_row = f'#hot-pool tr[data-object="data/{key}"]'
    wait_page(page, "the object hot on n0 and n1", lambda: "n0, n1" in text(page, hot_row), 10)
    assert "9.00 MiB" in text(page, hot_row)
    assert raw(page, "#node-title") == "n0 (this node)"
    ratio = report["hit_ratio"]
    assert ratio is not None and 0 < ratio < 1
    assert text(page, "#hit-ratio").startswith(f"{100 * ratio:.1f} %")
    page.screenshot(path=str(shots / "1-pool.png"), full_page=True)

    # A write at `local` while the origin refuses uploads: pending on the writer, then uploaded.
    origin_proxy.throttle = 503
    wkey = f"{prefix}ckpt.bin"
    with_durability(n0.s3(), "local").put_object(Bucket="data", Key=wkey, Body=payload(MIB, seed=6))
    wait_for("an upload refused", lambda: origin_proxy.writes_seen, 10)
    wait_page(page, "1 pending upload", lambda: text(page, "#pending-uploads") == "1", 10)
    wait_page(page, "its age", lambda: re.fullmatch(r"[0-9]+ s", text(page, "#oldest-pending")), 10)
    assert text(page, "#uploaded-total") == "0"
    assert text(page, "#last-error") != "–"
    assert n0.metric("cairn_pending_uploads") == 1 and n0.metric("cairn_oldest_pending_upload_age_seconds") > 0
    page.screenshot(path=str(shots / "2-pending.png"), full_page=True)
    origin_proxy.throttle = None
    wait_page(page, "the upload done", lambda: text(page, "#pending-uploads") == "0", 20)
    wait_page(page, "1 uploaded", lambda: text(page, "#uploaded-total") == "1", 10)
    assert text(page, "#oldest-pending") == "–"
    assert n0.metric("cairn_uploads_total") == 1 and n0.metric("cairn_oldest_pending_upload_age_seconds") == 0
    page.screenshot(path=str(shots / "3-uploaded.png"), full_page=True)

    # A killed node: suspected, then dead, listed first under attention and unreachable.
    n2.stop(signal.SIGKILL)

    def n2_flagged():
        row = page.locator('#attention tr[data-member="n2"] [data-state]')
        return row.count() == 1 and row.get_attribute("data-state") in ("suspect", "dead")

    wait_page(page, "n2 suspect or dead", n2_flagged, 20)
    wait_page(page, "n2 unreachable", lambda: page.locator('#details tr.unreachable[data-member="n2"]').count() == 1,
              20)
    assert "cannot be reached" in text(page, '#details tr[data-member="n2"]')
    wait_page(page, "n2 dead", lambda: page.locator('#attention tr[data-member="n2"] [data-state]')
              .get_attribute("data-state") == "dead", 20)
    assert text(page, "#count-alive b") == "2" and text(page, "#count-dead b") == "1"
    wait_page(page, "the event", lambda: re.search(r"n2\s+dead", text(page, "#events")), 10)
    page.screenshot(path=str(shots / "4-node-killed.png"), full_page=True)

    # Following the link to the dead node degrades to a message; a live one shows its figures.
    page.click('#attention a[href="?node=n2"]')
    wait_page(page, "n2 unreachable message", lambda: "n2 cannot be reached" in text(page, "#node-unreachable"), 15)
    assert text(page, "#node-body") == ""
    assert text(page, "#count-dead b") == "1"  # the pool view still renders
    page.screenshot(path=str(shots / "5-linked-dead-node.png"), full_page=True)
    page.goto(admin(n0) + "/?node=n1")
    wait_page(page, "n1's figures", lambda: raw(page, "#node-title") == "n1", 15)
    wait_page(page, "n1's tiers", lambda: "of 64.0 MiB" in text(page, "#tier-ram"), 10)
    page.screenshot(path=str(shots / "6-linked-node.png"), full_page=True)

    # Everything the page loaded came from the node it was served by.
    outside = [u for u in requested if not u.startswith(admin(n0) + "/")]
    assert not outside, outside
    assert any(u.startswith(admin(n0) + "/v1/pool") for u in requested)
    assert not script_errors, script_errors

    # The node serving the page goes away: the page says so above the figures it showed last.
    n0.stop(signal.SIGKILL)
    wait_page(page, "the pool error", lambda: "cannot be loaded from this node" in text(page, "#pool-error"), 15)
    assert "The node serving this page cannot be reached" in text(page, "#node-unreachable")
    assert text(page, "#node-body") == ""
    page.screenshot(path=str(shots / "7-serving-node-gone.png"), full_page=True)
    page.close()


def test_pool_detail_is_bounded_and_nodes_are_asked_on_demand(tmp_path):
    c = Cluster(tmp_path, 3, gossip=True, chunk=MIB)
    try:
        wait_for("3 alive", lambda: all_alive(c.nodes, ids(c)), 15)
        n0 = c.nodes[0]
        served_before = [n.metric("cairn_peer_served_total") for n in c.nodes[1:]]
        time.sleep(2)  # nothing polls: with no page open, no member is asked
        assert [n.metric("cairn_peer_served_total") for n in c.nodes[1:]] == served_before

        p = requests.get(admin(n0) + "/v1/pool?sample=2&nodes=n2", timeout=10).json()
        assert p["members"] == 3 and p["states"] == {"alive": 3}
        assert p["sample_limit"] == 2
        assert [d["id"] for d in p["details"]] == ["n0", "n2"]  # itself, then the node named
        assert all(d["report"] and d["error"] is None for d in p["details"])
        assert p["details"][1]["report"]["node"] == "n2"
        p = requests.get(admin(n0) + "/v1/pool?sample=1000", timeout=10).json()
        assert p["sample_limit"] == 32 and len(p["details"]) == 3
        p = requests.get(admin(n0) + "/v1/pool?sample=0", timeout=10).json()
        assert p["details"] == [] and p["members"] == 3
        r = requests.get(admin(n0) + "/v1/node?id=nobody", timeout=10)
        assert r.status_code == 404 and "nobody" in r.json()["error"]
        r = requests.get(admin(n0) + "/v1/node?id=n1", timeout=10)
        assert r.status_code == 200 and r.json()["node"] == "n1"
        # The peer route is authenticated like every other.
        peer = c.peer_addr(1)
        assert requests.get(f"http://{peer}/status", timeout=5).status_code == 403
        page = requests.get(admin(n0) + "/", timeout=5)
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "the page loads something external"
    finally:
        c.stop(signal.SIGKILL)
