"""Per-image HTTP fetch against a real aiohttp server with injected faults: every outcome class, transient
ones succeeding on retry, Retry-After honoured, the per-host budget (in flight and per second) never
exceeded, nothing crashing."""

import asyncio
import email.utils
import time

import pytest

from conftest_fetch import fault_server, jpeg_bytes, noise_image  # noqa: F401  (fixture)
from tol_builder.config import FetchConfig
from tol_builder.fetch.budget import LocalBudget
from tol_builder.fetch.http import Fetcher, parse_retry_after
from tol_builder.fetch.tasks import fetch_items


def _cfg(**kw) -> FetchConfig:
    base = dict(attempts=1, backoff_base=0.01, backoff_max=0.05, read_timeout=0.5, total_timeout=5.0,
                connect_timeout=2.0, max_redirects=3, max_bytes=200_000, per_host_concurrency=8,
                per_host_rps=0.0, user_agent="tol-test/1.0 (fetch tests)", max_side=128)
    base.update(kw)
    return FetchConfig(**base)


def _run(urls: list[str], cfg: FetchConfig, threads: int = 2, local_media: bool = False) -> dict[str, dict]:
    rows = {}
    items = [{"uid": f"u{i:03d}", "source": "t", "media_uri": u, "media_member": None} for i, u in enumerate(urls)]
    fetch_items(items, cfg, lambda r: rows.__setitem__(r["media_uri"], r), pass_no=0, threads=threads,
                local_media=local_media)
    assert len(rows) == len(urls)
    return rows


@pytest.fixture
def served(fault_server, tmp_path):
    img = jpeg_bytes(noise_image(320, 240, seed=1))
    fault_server.images["a"] = img
    fault_server.images["trunc"] = img[: len(img) // 2]  # a JPEG cut short, served in full as such
    fault_server.slow_seconds = 2.0
    local = tmp_path / "local.jpg"
    local.write_bytes(img)
    return fault_server, img, local


@pytest.mark.parametrize("threads", [1, 2])  # 1: decoded by the loop's thread in batches; 2: by a pool
def test_every_fault_has_its_outcome_class(served, tmp_path, threads):
    s, _, local = served
    u = s.url
    expect = {
        f"{u}/img/a": ("ok", None, 200),
        f"{u}/redirect/a": ("ok", None, 200),
        f"{u}/ctype/a": ("ok", None, 200),  # the content type is advisory: the bytes decide
        f"{u}/flaky/503/99/a": ("transient", "http_503", 503),
        f"{u}/flaky/500/99/a": ("transient", "http_500", 500),
        f"{u}/retry-after/1/99/a": ("transient", "http_429", 429),
        f"{u}/slow/99/a": ("transient", "timeout", None),
        f"{u}/reset/99/a": ("transient", "connection", None),
        f"{u}/truncated/99/a": ("transient", "truncated", None),
        f"{u}/missing": ("failed", "http_404", 404),
        f"{u}/html": ("failed", "not_image", 200),
        f"{u}/img/trunc": ("failed", "decode_error", 200),
        f"{u}/bomb.png": ("failed", "too_many_pixels", 200),
        f"{u}/loop/a": ("failed", "too_many_redirects", None),
        f"{u}/big": ("failed", "too_large", 200),
        "ftp://example.org/x.jpg": ("failed", "unsupported_scheme", None),
        "http://": ("failed", "bad_url", None),
        str(local): ("ok", None, None),
        local.as_uri(): ("ok", None, None),
        str(tmp_path / "absent.jpg"): ("failed", "file_not_found", None),
    }
    rows = _run(list(expect), _cfg(), threads, local_media=True)  # a source that declares local media
    got = {url: (r["status"], r.get("error_class"), r.get("http_status")) for url, r in rows.items()}
    assert got == expect
    for url, r in rows.items():
        if r["status"] == "ok":
            assert r["sha256"] and len(r["pdq"]) == 64 and r["stored_width"] <= 128 and r["jpeg"][:2] == b"\xff\xd8"
        else:
            assert r["error_message"] and r.get("jpeg") is None
    assert rows[f"{u}/redirect/a"]["final_url"] == f"{u}/img/a"
    assert rows[f"{u}/img/a"]["md5"] == rows[str(local)]["md5"]
    # a descriptive, settable User-Agent on every request
    assert {h.get("User-Agent") for _, _, h in s.log} == {"tol-test/1.0 (fetch tests)"}
    # the redirect loop stopped at the limit: 1 request + max_redirects hops
    assert s.hits["/loop/a"] + s.hits["/loop/b"] == 4


def test_transient_failures_succeed_on_retry(served):
    s, _, _ = served
    u = s.url
    urls = [f"{u}/flaky/503/2/a", f"{u}/flaky/500/1/a", f"{u}/reset/1/a", f"{u}/truncated/1/a", f"{u}/slow/1/a",
            f"{u}/retry-after/1/1/a"]
    rows = _run(urls, _cfg(attempts=3))
    assert {url: r["status"] for url, r in rows.items()} == dict.fromkeys(urls, "ok")
    assert [rows[url]["attempts"] for url in urls if "reset" not in url] == [3, 2, 2, 2, 2]
    # a dropped connection: aiohttp itself re-sends an idempotent GET once on a fresh connection
    assert s.hits["/reset/1/a"] == 2 and rows[urls[2]]["attempts"] in (1, 2)
    assert len({r["sha256"] for r in rows.values()}) == 1  # the same bytes, complete, every time
    # Retry-After: 1 was honoured: the second request came at least a second after the 429
    times = [t for t, path, _ in s.log if path == "/retry-after/1/1/a"]
    assert len(times) == 2 and times[1] - times[0] >= 0.95


def test_a_retry_after_beyond_the_cap_leaves_the_url_for_the_next_pass(served):
    s, _, _ = served
    url = f"{s.url}/retry-after/3600/1/a"
    t0 = time.time()
    rows = _run([url], _cfg(attempts=3, max_retry_after=5))
    assert rows[url]["status"] == "transient" and rows[url]["error_class"] == "http_429"
    assert "max_retry_after" in rows[url]["error_message"] and s.hits["/retry-after/3600/1/a"] == 1
    assert time.time() - t0 < 60  # it did not sit out the hour


def test_retry_after_pauses_the_whole_host(served):
    s, _, _ = served
    s.images["b"] = s.images["a"]
    urls = [f"{s.url}/retry-after/1/1/a", f"{s.url}/img/b", f"{s.url}/img/a?n=2", f"{s.url}/img/a?n=3"]
    rows = _run(urls, _cfg(attempts=2, per_host_concurrency=1))
    assert all(r["status"] == "ok" for r in rows.values())
    t429 = next(t for t, path, _ in s.log if path == "/retry-after/1/1/a")
    later = [t for t, path, _ in s.log if t > t429]
    assert later and min(later) - t429 >= 0.95  # nobody asked the host anything during the pause


def test_concurrency_budget_is_never_exceeded(served):
    s, _, _ = served
    urls = [f"{s.url}/img/a?delay=0.05&n={i}" for i in range(40)]
    rows = _run(urls, _cfg(per_host_concurrency=3, task_concurrency=16))
    assert all(r["status"] == "ok" for r in rows.values())
    assert 2 <= s.max_in_flight <= 3


def test_rate_budget_is_never_exceeded(served):
    s, _, _ = served
    urls = [f"{s.url}/img/a?n={i}" for i in range(30)]
    rows = _run(urls, _cfg(per_host_concurrency=8, per_host_rps=20.0, task_concurrency=16))
    assert all(r["status"] == "ok" for r in rows.values())
    times = sorted(t for t, _, _ in s.log)
    for i, t in enumerate(times):  # any one-second window: at most 20 requests (+1 for the window's edge)
        assert sum(1 for x in times[i:] if x - t < 1.0) <= 21
    assert times[-1] - times[0] >= 29 / 20 * 0.9  # 30 requests at 20/s take about 1.45 s


def test_local_budget_spacing_and_pause():
    async def main():
        budget = LocalBudget(concurrency=2, rps=10.0)
        stamps = []

        async def one():
            async with budget.slot("h"):
                stamps.append(time.time())

        await budget.pause("h", 0.3)
        t0 = time.time()
        await asyncio.gather(*(one() for _ in range(5)))
        return t0, stamps

    t0, stamps = asyncio.run(main())
    assert min(stamps) - t0 >= 0.29  # paused first
    gaps = [b - a for a, b in zip(sorted(stamps), sorted(stamps)[1:])]
    assert all(g >= 0.095 for g in gaps), gaps  # 10 per second: spaced by a tenth of a second


def test_retry_after_header_forms():
    assert parse_retry_after("120") == 120.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now) <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_fetcher_reuses_one_session_for_many_requests(served):
    s, _, _ = served

    async def main():
        async with Fetcher(_cfg(), LocalBudget(4, 0)) as f:
            session = f.session
            results = [await f.fetch(f"{s.url}/img/a?n={i}") for i in range(5)]
            return session, f.session, results

    first, last, results = asyncio.run(main())
    assert first is last and all(r.ok for r in results)


def test_decode_batch_waits_for_a_batch_or_a_moment():
    from tol_builder.fetch import tasks
    from tol_builder.fetch.http import FetchResult

    async def main() -> list[list[str]]:
        seen: list[str] = []
        snapshots = []
        batch = tasks.DecodeBatch(asyncio.get_running_loop(), lambda it, res: seen.append(it["uid"]))
        for i in range(3):
            batch.add({"uid": f"a{i}"}, FetchResult("ok", data=b""))
        snapshots.append(list(seen))  # 3 < DECODE_BATCH: waiting
        await asyncio.sleep(tasks.DECODE_WAIT * 3)
        snapshots.append(list(seen))  # the moment passed: decoded
        for i in range(tasks.DECODE_BATCH):
            batch.add({"uid": f"b{i}"}, FetchResult("ok", data=b""))
        snapshots.append(list(seen))  # a full batch: decoded at once, in arrival order
        return snapshots

    first, later, full = asyncio.run(main())
    assert first == [] and later == ["a0", "a1", "a2"]
    assert full == later + [f"b{i}" for i in range(tasks.DECODE_BATCH)]


def test_an_error_in_a_timer_started_decode_reaches_the_task():
    from tol_builder.fetch import tasks
    from tol_builder.fetch.http import FetchResult

    def fail(it, res):
        raise OSError(28, "No space left on device")

    async def main() -> None:
        batch = tasks.DecodeBatch(asyncio.get_running_loop(), fail)
        batch.add({"uid": "x"}, FetchResult("ok", data=b""))
        await asyncio.sleep(tasks.DECODE_WAIT * 3)  # the timer's drain failed inside the loop
        batch.drain()

    with pytest.raises(OSError, match="No space left"):
        asyncio.run(main())
