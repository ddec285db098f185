"""The per-host politeness budget: requests in flight and requests per second per host, cluster-wide.

Owns only the waiting; never does HTTP. A fetch task asks `make_budget(...)` for a budget and wraps every
request in `async with budget.slot(host)`. Inside a Dask worker the budget is shared by the whole cluster
through the scheduler; anywhere else (tests, `client=None` runs, a plain script) it is local to the process.

Cluster design (all state on the scheduler, in Dask's own primitives, so a dead worker's share comes back by
lease timeout and nothing lives on a worker that could die):

* Concurrency: one `distributed.Semaphore` per host with `per_host_concurrency` leases. Leases are not
  taken per request: a task takes leases lazily, up to its fair share ceil(concurrency / workers) and up to
  LEASES_PER_TRIP in one trip to the scheduler, keeps reusing them while it has requests for that host, and
  gives back leases idle for `IDLE_RELEASE` seconds (a give-back under way is finished, never cancelled).
  So the number of requests in flight to a host never exceeds the lease count, across every worker, while
  the scheduler sees a few calls per task rather than two per image.
* Rate: a second semaphore per host with `RATE_LEASES` (L) leases. A lease is a stream of k requests spaced
  at least L / rps apart, and its holder keeps it until L / rps after its last request. Each of the L lease
  slots therefore emits requests at least L / rps apart whoever holds it, so any window of w seconds sees at
  most rps * w + L requests to the host. k = rps * LEASE_SECONDS / L, so a lease lasts about a second and the
  scheduler sees ~L calls per second per host. One task alone may hold every slot (full rate).
* Retry-After: a 429/503 with Retry-After pauses the host locally at once and is published in the
  scheduler's metadata store (`Client.set_metadata`, key [namespace, "pause", host]); every task reads it
  before its first request to the host and then at most once per `PAUSE_POLL` seconds.

The local budget keeps the same rules with asyncio primitives.

Failures: any error of a budget call (the scheduler unreachable or closing, as when the cluster shuts down
under Ctrl-C: "ConnectionPool is closed") is raised as `BudgetUnavailable`. It says nothing about the image
being fetched: the fetch task ends without a completion marker, and the image is fetched by the re-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

RATE_LEASES = 2  # L: rate lease slots per host (fixed: every task of the cluster must agree on it)
LEASE_SECONDS = 1.0  # about how long one rate lease lasts
IDLE_RELEASE = 0.25  # seconds a concurrency lease may stay idle before it goes back to the cluster
PAUSE_POLL = 1.0  # seconds between reads of a host's cluster-wide pause
ACQUIRE_WAIT = 0.5  # seconds one blocking lease request waits on the scheduler before it is re-issued
LEASES_PER_TRIP = 8  # concurrency leases one trip to the scheduler takes at most (each is one call)


def host_of(url_or_host: str) -> str:
    """The budget key: the host name, lower case (ports share the host's budget)."""
    if "/" not in url_or_host:
        return url_or_host.lower()
    from urllib.parse import urlsplit

    return (urlsplit(url_or_host).hostname or "").lower()


class BudgetUnavailable(Exception):
    """The host budget could not be kept (its scheduler unreachable or closing): an infrastructure error, never
    a verdict on the image being fetched."""


def _unavailable(e: Exception) -> BudgetUnavailable:
    if isinstance(e, BudgetUnavailable):
        return e
    return BudgetUnavailable(f"host budget unavailable: {type(e).__name__}: {e}")


class Budget:
    """Interface: `async with budget.slot(host)` around each request; `await pause(host, s)` on Retry-After.

    Subclasses implement `_acquire`, `_release`, `_pause`; the public calls raise any error of theirs as
    BudgetUnavailable (cancellation passes through as it is)."""

    concurrency: int
    rps: float

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        await self.acquire(host)
        try:
            yield
        finally:
            await self.release(host)

    async def acquire(self, host: str) -> None:
        try:
            await self._acquire(host)
        except Exception as e:
            raise _unavailable(e) from e

    async def release(self, host: str) -> None:
        try:
            await self._release(host)
        except Exception as e:
            raise _unavailable(e) from e

    async def pause(self, host: str, seconds: float) -> None:
        try:
            await self._pause(host, seconds)
        except Exception as e:
            raise _unavailable(e) from e

    async def _acquire(self, host: str) -> None:
        raise NotImplementedError

    async def _release(self, host: str) -> None:
        raise NotImplementedError

    async def _pause(self, host: str, seconds: float) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ local
@dataclass
class _LocalHost:
    sem: asyncio.Semaphore
    next_slot: float = 0.0
    pause_until: float = 0.0


class LocalBudget(Budget):
    """One process: an asyncio semaphore and a strict spacing of 1 / rps per host."""

    def __init__(self, concurrency: int, rps: float):
        self.concurrency, self.rps = max(1, int(concurrency)), float(rps)
        self._hosts: dict[str, _LocalHost] = {}

    def _host(self, host: str) -> _LocalHost:
        h = self._hosts.get(host)
        if h is None:
            h = self._hosts[host] = _LocalHost(asyncio.Semaphore(self.concurrency))
        return h

    async def _acquire(self, host: str) -> None:
        h = self._host(host)
        await h.sem.acquire()
        try:
            while True:
                now = time.time()
                if h.pause_until > now:
                    await asyncio.sleep(h.pause_until - now)
                    continue
                if self.rps <= 0:
                    return
                slot = max(now, h.next_slot)  # reserved atomically: no await between read and write
                h.next_slot = slot + 1.0 / self.rps
                if slot > now:
                    await asyncio.sleep(slot - now)
                if h.pause_until <= time.time():
                    return
        except BaseException:
            h.sem.release()
            raise

    async def _release(self, host: str) -> None:
        self._host(host).sem.release()

    async def _pause(self, host: str, seconds: float) -> None:
        h = self._host(host)
        h.pause_until = max(h.pause_until, time.time() + max(0.0, seconds))


# ---------------------------------------------------------------------------------------------- cluster
@dataclass
class _RateStream:
    sem: Any  # a distributed.Semaphore instance of its own (release() frees the oldest lease of an instance)
    held: bool = False
    tokens: int = 0
    last: float = 0.0  # time of the last request reserved under the current lease
    acquired_at: float = 0.0


@dataclass
class _ClusterHost:
    conc: Any  # distributed.Semaphore
    cond: asyncio.Condition
    rate_lock: asyncio.Lock
    streams: list[_RateStream] = field(default_factory=list)
    held: int = 0  # concurrency leases this task holds
    in_use: int = 0
    waiting: int = 0
    acquiring: bool = False
    idle_since: float = 0.0
    pause_until: float = 0.0
    pause_read: float = 0.0
    first_read: Any = None  # the task reading the cluster-wide pause before the first request to the host
    client: Any = None  # the worker's distributed client (scheduler metadata holds the pause)
    last_extra_try: float = 0.0
    background: set = field(default_factory=set)


class ClusterBudget(Budget):
    """The budget of a Dask cluster (see the module docstring). Create it inside a task running on a worker."""

    def __init__(self, concurrency: int, rps: float, workers: int = 1, namespace: str = "tol-fetch"):
        self.concurrency, self.rps = max(1, int(concurrency)), float(rps)
        self.share = max(1, math.ceil(self.concurrency / max(1, int(workers))))
        self.namespace = namespace
        self.k = max(1, round(self.rps * LEASE_SECONDS / RATE_LEASES)) if self.rps > 0 else 0
        self.spacing = RATE_LEASES / self.rps if self.rps > 0 else 0.0
        self._hosts: dict[str, _ClusterHost] = {}
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="tol-budget")
        self._maintenance: asyncio.Task | None = None
        self._closed = False
        self._giving_back = False  # the maintenance task is inside a give-back (must not be cancelled)
        self.stats = {"lease_calls": 0}

    # -- plumbing: distributed's sync API is called from threads, never from this event loop
    async def _call(self, fn, *args, **kwargs):
        self.stats["lease_calls"] += 1
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def _name(self, kind: str, host: str, *params: Any) -> str:
        # the parameters are part of the name: the scheduler refuses one name with two lease counts
        return ":".join([self.namespace, kind, host, *map(str, params)])

    def _host(self, host: str) -> _ClusterHost:
        h = self._hosts.get(host)
        if h is None:
            from distributed import Semaphore

            h = _ClusterHost(conc=Semaphore(max_leases=self.concurrency, name=self._name("conc", host, self.concurrency)),
                             cond=asyncio.Condition(), rate_lock=asyncio.Lock())
            from distributed import get_client

            # taken here, in the task's thread: distributed finds the worker's client only from that thread
            h.client = get_client()
            if self.rps > 0:
                name = self._name("rate", host, self.rps, RATE_LEASES)
                h.streams = [_RateStream(Semaphore(max_leases=RATE_LEASES, name=name)) for _ in range(RATE_LEASES)]
            self._hosts[host] = h
            # the first read of the host's cluster-wide pause runs while the first leases are being taken
            h.pause_read = time.time()
            h.first_read = asyncio.get_running_loop().create_task(self._refresh_pause(h, host))
            if self._maintenance is None:
                self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
        return h

    # -- concurrency
    async def _acquire(self, host: str) -> None:
        h = self._host(host)
        async with h.cond:
            h.waiting += 1
            try:
                while True:
                    if h.in_use < h.held:
                        h.in_use += 1
                        break
                    if h.held < self.share and not h.acquiring:
                        # one trip to a pool thread takes several free leases of our share (LEASES_PER_TRIP):
                        # the loop's thread may be busy decoding for tens of ms, one lease a trip starved it
                        h.acquiring = True
                        h.cond.release()
                        try:
                            got = await self._call(_acquire_many, h.conc, self.share - h.held)
                        finally:
                            await h.cond.acquire()
                            h.acquiring = False
                        h.held += got
                        h.idle_since = time.time()  # not idle since the epoch: the give-back would take them
                        h.cond.notify_all()
                        continue
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(h.cond.wait(), ACQUIRE_WAIT)
            finally:
                h.waiting -= 1
        try:
            await self._rate(h, host)
        except BaseException:
            await self._release(host)
            raise

    async def _release(self, host: str) -> None:
        h = self._hosts[host]
        async with h.cond:
            h.in_use -= 1
            if h.in_use < h.held and not h.waiting:
                h.idle_since = time.time()
            h.cond.notify()

    # -- rate
    async def _rate(self, h: _ClusterHost, host: str) -> None:
        while True:
            await self._wait_pause(h, host)
            if self.rps <= 0:
                return
            async with h.rate_lock:
                now = time.time()
                usable = [s for s in h.streams if s.held and s.tokens > 0]
                best = min(usable, key=lambda s: s.last + self.spacing, default=None)
                free = [s for s in h.streams if not s.held]
                if free and (best is None or (best.last + self.spacing > now and now - h.last_extra_try > 0.2)):
                    h.last_extra_try = now
                    # blocking only when there is nothing to use; otherwise just try for an extra stream
                    got = await self._call(free[0].sem.acquire, timeout=ACQUIRE_WAIT if best is None else 0)
                    if got:
                        s = free[0]
                        s.held, s.tokens, s.last, s.acquired_at = True, self.k, 0.0, time.time()
                        best = s
                if best is None:
                    # our streams are spent and wait to be given back, or every slot is held elsewhere
                    ends = [s.last + self.spacing for s in h.streams if s.held]
                    slot = None
                    pause = max(0.01, min(ends) - now) if ends and not free else 0.0
                else:
                    slot = max(time.time(), best.last + self.spacing)
                    best.tokens -= 1
                    best.last = slot
            if slot is None:
                if pause:
                    await asyncio.sleep(pause)
                continue
            delay = slot - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if h.pause_until <= time.time():
                return

    # -- Retry-After
    async def _pause(self, host: str, seconds: float) -> None:
        """Pause the host here at once, and for every task of the cluster as soon as the scheduler has it."""
        h = self._host(host)
        until = time.time() + max(0.0, seconds)
        if until <= h.pause_until:
            return
        h.pause_until = until
        await self._call(self._publish_pause, h, host, until)

    def _pause_key(self, host: str) -> list[str]:
        return [self.namespace, "pause", host]

    def _publish_pause(self, h: _ClusterHost, host: str, until: float) -> None:
        try:
            current = float(h.client.get_metadata(self._pause_key(host), 0.0))
            if until > current:
                h.client.set_metadata(self._pause_key(host), until)
        except Exception:  # the local pause still holds; a lost publication only makes others less patient
            pass

    def _read_pause(self, h: _ClusterHost, host: str) -> float:
        try:
            return float(h.client.get_metadata(self._pause_key(host), 0.0))
        except Exception:  # the scheduler is busy: no cluster-wide pause known this time
            return 0.0

    async def _refresh_pause(self, h: _ClusterHost, host: str) -> None:
        h.pause_until = max(h.pause_until, await self._call(self._read_pause, h, host))

    async def _wait_pause(self, h: _ClusterHost, host: str) -> None:
        now = time.time()
        # every request to a host waits for the first read of its pause (started by _host), not only the
        # one that asked (concurrent first requests would otherwise go out before a published pause is known)
        if not h.first_read.done():
            await asyncio.shield(h.first_read)
        elif now - h.pause_read > PAUSE_POLL:  # later reads run behind the requests
            h.pause_read = now
            h.background.add(t := asyncio.get_running_loop().create_task(self._refresh_pause(h, host)))
            t.add_done_callback(h.background.discard)
        while h.pause_until > time.time():
            await asyncio.sleep(h.pause_until - time.time())

    # -- giving leases back
    async def _maintain(self) -> None:
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:  # closing, and no give-back under way: nothing to finish
                return
            if self._closed:
                return
            self._giving_back = True
            try:
                await self._give_back(final=False)
            finally:
                self._giving_back = False

    async def _give_back(self, final: bool) -> None:
        now = time.time()
        for host, h in list(self._hosts.items()):
            for s in h.streams:
                if s.held and now >= s.last + self.spacing and (
                        final or s.tokens == 0 or now - s.acquired_at > 2 * LEASE_SECONDS):
                    s.held, s.tokens = False, 0
                    await self._call(_quiet_release, s.sem)
            surplus = 0
            async with h.cond:
                if h.held > h.in_use and (final or (not h.waiting and now - h.idle_since >= IDLE_RELEASE)):
                    surplus = h.held - h.in_use
                    h.held -= surplus
            if surplus:
                await self._call(_release_many, h.conc, surplus)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._maintenance is not None:
            # a give-back under way is let finish, never cancelled: cancelled between counting leases as
            # returned and returning them, it left them taken on the scheduler until its lease timeout (30 s
            # and more of every task of the cluster waiting for a host). Asleep, it is woken at once.
            if not self._giving_back:
                self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._maintenance
        # hold each rate lease until its spacing has passed, so the next holder keeps the bound
        wait = max([s.last + self.spacing - time.time() for h in self._hosts.values() for s in h.streams
                    if s.held] or [0.0])
        if wait > 0:
            await asyncio.sleep(wait)
        await self._give_back(final=True)
        for h in self._hosts.values():  # reads of pauses nobody waits for any more
            for t in [h.first_read, *h.background]:
                if t is not None and not t.done():
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        for h in self._hosts.values():
            for sem in [h.conc] + [s.sem for s in h.streams]:
                callback = getattr(sem, "refresh_callback", None)
                if callback is not None:
                    callback.stop()
        self._pool.shutdown(wait=False)


def _acquire_many(sem, want: int) -> int:
    """Take up to `want` leases (at most LEASES_PER_TRIP, so that the first requests need not wait for a
    whole share): those free right now, or else (waiting up to ACQUIRE_WAIT) one."""
    got = 0
    while got < min(want, LEASES_PER_TRIP) and sem.acquire(timeout=0):
        got += 1
    if not got and sem.acquire(timeout=ACQUIRE_WAIT):
        got = 1
    return got


def _release_many(sem, n: int) -> None:
    for _ in range(n):
        _quiet_release(sem)


def _quiet_release(sem) -> None:
    try:
        sem.release()
    except Exception:  # already timed out on the scheduler: nothing left to give back
        pass


def in_cluster() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def make_budget(concurrency: int, rps: float, workers: int = 1) -> Budget:
    """The cluster-wide budget inside a Dask worker, else a budget local to this process."""
    if in_cluster():
        return ClusterBudget(concurrency, rps, workers)
    return LocalBudget(concurrency, rps)
