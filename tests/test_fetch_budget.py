"""The per-host budget holds across the whole cluster, not per worker: tasks on two worker processes of a
real LocalCluster share one limit of requests in flight, one request rate, and one Retry-After pause."""

import time

import pytest

from conftest_fetch import fault_server, jpeg_bytes, noise_image  # noqa: F401  (fixture)
from tol_builder.config import FetchConfig
from tol_builder.fetch.budget import ClusterBudget, LocalBudget, make_budget

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(lc)
    try:
        yield c, sorted(c.nthreads())
    finally:
        c.close()
        lc.close()


def fetch_on_worker(urls: list[str], cfg: dict, workers: int) -> dict:
    """A task: fetch URLs with the budget a task gets (cluster-wide inside a worker)."""
    from tol_builder.fetch.budget import in_cluster
    from tol_builder.fetch.tasks import fetch_config, fetch_items

    rows = []
    items = [{"uid": str(i), "source": "t", "media_uri": u, "media_member": None} for i, u in enumerate(urls)]
    stats = fetch_items(items, fetch_config(cfg), rows.append, pass_no=0, threads=1, workers=workers)
    return {"ok": sum(r["status"] == "ok" for r in rows), "n": len(rows), "cluster": in_cluster(),
            "budget_calls": stats["budget_calls"]}


def _cfg(**kw) -> dict:
    # the worker processes build their settings from this dict: the loopback server needs the allowance here
    base = dict(attempts=2, backoff_base=0.01, max_side=64, task_concurrency=16, per_host_rps=0.0,
                allow_private_addresses=True)
    base.update(kw)
    return base


@pytest.fixture
def server(fault_server):
    fault_server.images["a"] = jpeg_bytes(noise_image(96, 64))
    return fault_server


def test_in_flight_limit_is_shared_by_every_worker(cluster, server):
    client, workers = cluster
    cfg = _cfg(per_host_concurrency=3)
    futures = [client.submit(fetch_on_worker, [f"{server.url}/img/a?delay=0.1&t={t}&i={i}" for i in range(15)],
                             cfg, 2, workers=[workers[t % 2]], pure=False) for t in range(4)]
    results = client.gather(futures)
    assert all({k: r[k] for k in ("ok", "n", "cluster")} == {"ok": 15, "n": 15, "cluster": True} for r in results)
    assert server.max_in_flight <= 3  # one budget of 3 for the cluster (two per-worker budgets would allow 6)
    assert server.max_in_flight >= 2


def test_request_rate_is_shared_by_every_worker(cluster, server):
    client, workers = cluster
    rps = 8.0
    cfg = _cfg(per_host_concurrency=8, per_host_rps=rps)
    futures = [client.submit(fetch_on_worker, [f"{server.url}/img/a?t={t}&i={i}" for i in range(12)], cfg, 2,
                             workers=[workers[t]], pure=False) for t in range(2)]
    assert all(r["ok"] == 12 for r in client.gather(futures))
    times = sorted(t for t, _, _ in server.log)
    # any window of one second: at most rps + the RATE_LEASES burst (+1 for the window edge);
    # two per-worker limits of 8/s would put about 16 in a window
    worst = max(sum(1 for x in times[i:] if x - t < 1.0) for i, t in enumerate(times))
    assert worst <= rps + 2 + 1, worst
    assert times[-1] - times[0] >= (24 - rps - 2) / rps  # 24 requests at 8/s cannot all be early


def test_retry_after_pauses_the_host_for_other_workers(cluster, server):
    client, workers = cluster
    cfg = _cfg(per_host_concurrency=4, max_retry_after=10)
    first = client.submit(fetch_on_worker, [f"{server.url}/retry-after/3/1/a"], cfg, 2, workers=[workers[0]],
                          pure=False)
    deadline = time.time() + 60
    while not any(p.startswith("/retry-after/") for p in server.paths_requested()):
        assert time.time() < deadline
        time.sleep(0.02)
    t429 = server.log[0][0]
    # wait until it is published on the scheduler (requests already on their way when a 429 arrives cannot be
    # recalled; the budget promises that every request asked for after that waits)
    while float(client.get_metadata(["tol-fetch", "pause", "127.0.0.1"], 0.0)) < t429 + 2.5:
        assert time.time() < deadline
        time.sleep(0.02)
    second = client.submit(fetch_on_worker, [f"{server.url}/img/a?i={i}" for i in range(3)], cfg, 2,
                           workers=[workers[1]], pure=False)
    results = [{k: r[k] for k in ("ok", "n", "cluster")} for r in client.gather([first, second])]
    assert results == [{"ok": 1, "n": 1, "cluster": True}, {"ok": 3, "n": 3, "cluster": True}]
    others = [t for t, p, _ in server.log if p.startswith("/img/")]
    assert min(others) - t429 >= 2.9  # the other worker waited out the pause the first one was told


def test_a_task_takes_its_share_of_leases_in_a_few_scheduler_calls(cluster, server):
    # a worker's loop thread is often busy decoding: one lease per scheduler call starved it of requests
    client, workers = cluster
    cfg = _cfg(per_host_concurrency=16, task_concurrency=16)
    urls = [f"{server.url}/img/a?delay=0.05&i={i}" for i in range(48)]
    r = client.submit(fetch_on_worker, urls, cfg, 2, workers=[workers[0]], pure=False).result()
    assert r["ok"] == 48 and r["cluster"]
    assert r["budget_calls"] <= 5  # take the share of 8 at once, read the pause, give the leases back
    assert 4 <= server.max_in_flight <= 8  # the task's fair share of the cluster's 16


def test_without_a_cluster_the_budget_is_local():
    assert isinstance(make_budget(4, 10.0, workers=3), LocalBudget)


def test_cluster_budget_share_and_lease_sizes():
    b = ClusterBudget(concurrency=8, rps=20.0, workers=3)
    assert b.share == 3 and b.k == 10 and b.spacing == pytest.approx(0.1)
    b = ClusterBudget(concurrency=1, rps=0.5, workers=4)
    assert b.share == 1 and b.k == 1 and b.spacing == pytest.approx(4.0)
    FetchConfig()  # defaults construct


def close_while_giving_back(host: str) -> dict:
    """A task: its budget's give-back has counted idle leases as returned when the task closes the budget."""
    import asyncio

    from distributed import get_worker

    async def main() -> dict:
        b = ClusterBudget(concurrency=6, rps=0.0, workers=2)
        for _ in range(3):
            await b.acquire(host)
        for _ in range(3):
            await b.release(host)
        h = b._hosts[host]
        held = h.held
        h.idle_since = 0.0  # idle long enough: the next round of the give-back returns them
        while h.held:
            await asyncio.sleep(0)  # the give-back has taken them off the books and asked a thread to return them
        await b.aclose()
        return {"held": held}

    out = asyncio.run(main())
    scheduler_leases = get_worker().client.run_on_scheduler(
        lambda dask_scheduler: sum(len(v) for v in dask_scheduler.extensions["semaphores"].leases.values()))
    return {**out, "scheduler_leases": scheduler_leases}


def test_closing_a_budget_during_a_give_back_returns_every_lease(cluster):
    # a give-back cancelled by the close lost its leases until the scheduler's lease timeout (30 s and more
    # of every task of the cluster waiting for the host)
    client, workers = cluster
    for i in range(5):
        r = client.submit(close_while_giving_back, f"close-{i}.example", workers=[workers[i % 2]], pure=False).result()
        assert r == {"held": 3, "scheduler_leases": 0}
