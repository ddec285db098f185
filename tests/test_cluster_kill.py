"""Lost workers: the demo built on a real multi-process cluster (`dask scheduler` and `dask worker` processes on
127.0.0.1, joined with `tol build --scheduler`), with one worker process SIGKILLed in the middle of the fetch
stage and another in the middle of the taxonomy stage, completes in the same run and ends with the same
catalog tables and shard bytes as a clean build. Nothing lost, nothing doubled.

Workers run with --no-nanny, so a SIGKILLed worker really dies (a nanny would restart it in place); each kill
is followed by a fresh worker joining, as a batch system's next job would. Kills land on events, not times:

* fetch: a fetch task has written a media chunk (fetch.chunk_rows is small so that every task writes several)
  and has no completion marker yet: the worker executing it is killed;
* taxonomy: the stage's first authority database is written (cache/taxonomy/<name>.duckdb): the worker
  executing an authority load that has no marker yet is killed (reconcile has not started then).

The target worker is frozen (SIGSTOP) before the kill and the task's marker checked absent while it cannot run,
so a kill counts only if it landed inside an unfinished task; then the test asserts the task ran again on
another worker, and for fetch that the re-run kept the killed run's chunks instead of fetching them twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tol_builder import catalog
from tol_builder.demo import prepare_demo
from tol_builder.demo.server import serve_directory
from tol_builder.fileio import TMP_PREFIX, atomic_path
from tol_builder.fetch.media import chunk_files, media_dir
from tol_builder.runner import Runner, Task, marker_path, read_markers, read_plan
from tol_builder.taxonomy.authorities import authority_db

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# What legitimately differs between a build with killed workers and a clean one. Everything else of every
# catalog table and view is compared row for row (as sorted multisets) and by row count.
LEFT_OUT_TABLES = {
    "stats": "per-task counters and run times from the completion markers: a re-run task counts what it did "
             "itself (a resumed fetch task reports resumed_done, not downloads), and run times always differ",
    "tables": "documentation of the catalog (names, descriptions, columns), not build output",
    "_parquet_views": "the catalog's registry of parquet paths (absolute to each build directory)",
}
# No column needs leaving out: media.attempts and media.pass are compared too. A killed fetch task's written
# chunks are kept as they are and its unwritten rows are fetched by the re-run from scratch (attempts start
# over, pass 0), so they equal a clean build's. Shard files: only the build directory's path in
# shards/README.md (its example commands) is replaced by a placeholder.
LEFT_OUT_COLUMNS: dict[str, dict[str, str]] = {}

FETCH_CHUNK_ROWS = 4  # media rows per chunk file: every fetch task of the demo writes several chunks


def dask_command() -> str:
    bindir = Path(sys.executable).parent
    return str(bindir / "dask") if (bindir / "dask").exists() else "dask"


@dataclass
class Kill:
    stage: str
    task: str  # the runner's task key (marker name)
    worker: str
    pid: int
    markers_at_kill: int
    planned: int
    outputs_at_kill: int  # output files of the stage written when the kill landed
    chunk_rows_at_kill: int = 0  # fetch: media rows the killed task had written
    chunks_at_kill: list[str] = field(default_factory=list)


class ExternalCluster:
    """A `dask scheduler` and `dask worker` processes (--no-nanny, one thread each) on 127.0.0.1."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.scheduler_file = tmp / "scheduler.json"
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.env = dict(os.environ, PYTHONPATH=path)  # the workers import this checkout's tol_builder
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.client = None

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with open(self.tmp / log, "wb") as f:
            return subprocess.Popen([dask_command(), *args], stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.tmp, start_new_session=True)

    def start(self, workers: int) -> None:
        from distributed import Client

        # --idle-timeout, --death-timeout: nothing outlives a test process that died without cleaning up
        self.scheduler = self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                      "--scheduler-file", str(self.scheduler_file), "--idle-timeout", "600"],
                                     "scheduler.log")
        deadline = time.time() + 60
        while not (self.scheduler_file.exists() and self.scheduler_file.stat().st_size):
            assert self.scheduler.poll() is None, self.log("scheduler.log")
            assert time.time() < deadline, "the scheduler wrote no scheduler file"
            time.sleep(0.1)
        for _ in range(workers):
            self.add_worker()
        self.client = Client(scheduler_file=str(self.scheduler_file), timeout="30s")
        self.client.wait_for_workers(workers, timeout=90)

    def add_worker(self) -> str:
        name = f"w{len(self.workers)}"
        self.workers[name] = self._spawn(
            ["worker", "--scheduler-file", str(self.scheduler_file), "--nthreads", "1", "--nworkers", "1",
             "--no-nanny", "--name", name, "--no-dashboard", "--local-directory", str(self.tmp / name),
             "--death-timeout", "60"], f"{name}.log")
        return name

    def worker_names(self) -> dict[str, str]:
        """{address: name} of the workers the scheduler knows now."""
        return {addr: str(w["name"]) for addr, w in self.client.scheduler_info()["workers"].items()}

    def executing(self, stage: str) -> list[tuple[str, str]]:
        """(worker name, task key) of every task of `stage` executing right now (runner keys:
        '<stage>-<task key>-<8 hex digits>')."""
        try:
            names, stacks = self.worker_names(), self.client.call_stack()
        except OSError:  # a worker that just died and the scheduler has not yet removed: ask again
            return []
        found = []
        for addr, keys in stacks.items():
            for key in keys:
                if isinstance(key, str) and key.startswith(f"{stage}-") and addr in names:
                    found.append((names[addr], key[len(stage) + 1:].rsplit("-", 1)[0]))
        return found

    def log(self, name: str) -> str:
        p = self.tmp / name
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        for proc in [*self.workers.values(), self.scheduler]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.workers.values(), self.scheduler]:
            if proc is None:
                continue
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def marker_count(out: Path, stage: str) -> int:
    return len(read_markers(out, stage))


def planned(out: Path, stage: str) -> int:
    return len(read_plan(out, stage) or [])


def fetch_chunks(out: Path, task: str) -> list[Path]:
    return chunk_files(media_dir(out, task.split(".", 1)[0]), task)


def any_unfinished_fetch_chunk(out: Path) -> bool:
    """Event: some fetch task has written a media chunk and has no marker yet."""
    done = set(read_markers(out, "fetch"))
    for p in (out / "media").glob("*/*.parquet"):
        task = p.name.rsplit(".", 2)[0]  # <task key>.<nnnnn>.parquet
        if task not in done:
            return True
    return False


def authority_count(out: Path) -> int:
    return len(list((out / "cache" / "taxonomy").glob("*.duckdb")))


def first_authority_written(out: Path) -> bool:
    return authority_count(out) >= 1


def kill_worker_in(cluster: ExternalCluster, out: Path, stage: str, event, task_started, outputs,
                   build: subprocess.Popen, timeout: float = 240) -> Kill:
    """When `event(out)` holds, SIGKILL the worker executing an unfinished task of `stage` for which
    `task_started(out, task)` holds. The worker is frozen first and the task's marker checked absent while it
    cannot run: the kill lands inside the task, or it is not made and the next candidate is tried."""
    deadline = time.time() + timeout
    while True:
        assert build.poll() is None, f"the build ended before the {stage} kill point"
        assert time.time() < deadline, f"no {stage} task to kill within {timeout} s"
        if not event(out):
            time.sleep(0.005)
            continue
        for name, task in cluster.executing(stage):
            proc = cluster.workers[name]
            if proc.poll() is not None or marker_path(out, stage, task).exists() or not task_started(out, task):
                continue
            os.kill(proc.pid, signal.SIGSTOP)
            if marker_path(out, stage, task).exists():  # finished between the look and the freeze
                os.kill(proc.pid, signal.SIGCONT)
                continue
            chunks = fetch_chunks(out, task) if stage == "fetch" else []
            kill = Kill(stage, task, name, proc.pid, marker_count(out, stage), planned(out, stage), outputs(out),
                        sum(pq.read_metadata(p).num_rows for p in chunks), [p.name for p in chunks])
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            assert not marker_path(out, stage, task).exists()
            return kill
        time.sleep(0.005)


def relations(out: Path) -> list[str]:
    con = catalog.connect(out)
    try:
        return sorted({r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()})
    finally:
        con.close()


def table_rows(out: Path, table: str) -> tuple[list[str], list[str]]:
    """(compared columns, every row as canonical JSON, sorted): the table as a multiset of rows."""
    left_out = LEFT_OUT_COLUMNS.get(table, {})
    cols = [c for c in catalog.query(out, f'SELECT * FROM "{table}" LIMIT 0').column_names if c not in left_out]
    rows = catalog.query(out, f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM \"{table}\"").to_pylist()

    def plain(v):
        return hashlib.sha256(v).hexdigest() if isinstance(v, bytes) else str(v)

    return cols, sorted(json.dumps(r, sort_keys=True, default=plain) for r in rows)


def shard_files(out: Path) -> dict[str, str]:
    """Every file under shards/ and shards_meta/ by content; the build directory's own path (in README.md's
    example commands) replaced by a placeholder."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes().replace(str(out).encode(), b"<out>")).hexdigest()
            for p in sorted([*(out / "shards").rglob("*"), *(out / "shards_meta").rglob("*")]) if p.is_file()}


def build_cmd(wf: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tol_builder.cli", "build", str(wf), "--out", str(out), "--quiet", *extra]


def test_workers_killed_in_fetch_and_taxonomy_the_build_completes_with_a_clean_builds_outputs(tmp_path):
    inputs = prepare_demo(tmp_path / "demo")
    inputs.template.setdefault("fetch", {})["chunk_rows"] = FETCH_CHUNK_ROWS
    cluster = ExternalCluster(tmp_path)
    with serve_directory(inputs.eol_root()) as base_url:  # the EOL "remote" images, served from this process
        wf = inputs.write_workflow(base_url)
        cluster.start(workers=2)
        killed = tmp_path / "killed"
        build = subprocess.Popen(build_cmd(wf, killed, "--scheduler", str(cluster.scheduler_file)), cwd=ROOT,
                                 env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            kills = [kill_worker_in(cluster, killed, "fetch", any_unfinished_fetch_chunk,
                                    lambda out, task: bool(fetch_chunks(out, task)),
                                    lambda out: len(list((out / "media").glob("*/*.parquet"))), build)]
            cluster.add_worker()  # the next job joins
            kills.append(kill_worker_in(cluster, killed, "taxonomy.load", first_authority_written,
                                        lambda out, task: True, authority_count, build))
            cluster.add_worker()
            _, err = build.communicate(timeout=300)
        finally:
            if build.poll() is None:
                build.kill()
                build.wait()
        assert build.returncode == 0, err[-3000:] + "\n" + cluster.log("scheduler.log")
        worker_pids = {p.pid for p in cluster.workers.values()}
        cluster.close()

        clean = tmp_path / "clean"  # the same workflow on a LocalCluster, no kills
        r = subprocess.run(build_cmd(wf, clean), cwd=ROOT, env=cluster.env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    # each kill landed inside its stage: started (an output written), not finished (a task without a marker)
    fetch, taxonomy = kills
    assert fetch.chunk_rows_at_kill > 0 and fetch.outputs_at_kill > 0 and fetch.markers_at_kill < fetch.planned
    assert 1 <= taxonomy.outputs_at_kill < taxonomy.planned and taxonomy.markers_at_kill < taxonomy.planned
    assert authority_db(killed, taxonomy.task.split(".")[0]).exists()  # the killed load was done again
    for k in kills:
        assert cluster.workers[k.worker].returncode == -signal.SIGKILL
        again = read_markers(killed, k.stage)[k.task]
        assert again["pid"] != k.pid and again["pid"] in worker_pids, f"{k}: not re-run on another worker"
        assert marker_count(killed, k.stage) == planned(killed, k.stage)
    # the fetch task re-run kept what the killed run had written and fetched only the rest
    again = read_markers(killed, "fetch")[fetch.task]["counters"]
    assert again["resumed_done"] == fetch.chunk_rows_at_kill
    assert set(fetch.chunks_at_kill) <= {p.name for p in fetch_chunks(killed, fetch.task)}
    assert again["records"] == sum(pq.read_metadata(p).num_rows for p in fetch_chunks(killed, fetch.task))

    # the same catalog as the clean build: every table and view, row for row, nothing lost or doubled
    names = relations(clean)
    assert relations(killed) == names
    compared = [t for t in names if t not in LEFT_OUT_TABLES]
    assert {"records", "media", "taxa", "lineage_map", "exclusions", "samples"} <= set(compared)
    for table in compared:
        cols, expected = table_rows(clean, table)
        got_cols, got = table_rows(killed, table)
        assert got_cols == cols, table
        assert len(got) == len(expected), f"{table}: {len(got)} rows after the kills, {len(expected)} clean"
        assert got == expected, f"{table}: rows differ from the clean build's"
    one = catalog.query(killed, "SELECT count(*) - count(DISTINCT uid) AS d FROM media").column("d")[0].as_py()
    assert one == 0, "a media row doubled"
    assert catalog.query(killed, "SELECT count(*) AS n FROM media").column("n")[0].as_py() == \
        catalog.query(killed, "SELECT count(*) AS n FROM records").column("n")[0].as_py()
    assert shard_files(killed) == shard_files(clean)
    assert not list(killed.rglob(f"{TMP_PREFIX}*")), "a killed writer's temp file outlived the build"


def write_or_die(out: str, n: int) -> dict:
    """Writes its output through atomic_path; the first attempt SIGKILLs its own worker process mid-write."""
    first = Path(out) / f"attempted-{n}"
    with atomic_path(Path(out) / "parts" / f"{n}.txt") as tmp:
        tmp.write_text("half")
        if not first.exists():
            first.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        tmp.write_text(f"whole {n}")
    return {"parts": 1}


def test_a_worker_killed_mid_write_leaves_no_temp_file_once_its_stage_is_done(tmp_path):
    # regression: the temp file of a task whose worker died stayed after the stage completed (the runner
    # cleaned temp files only before running tasks, and a complete stage runs none again)
    from tol_builder.cluster import close_client, get_client
    from tol_builder.config import ClusterConfig

    client = get_client(ClusterConfig(n_workers=1, threads_per_worker=1, dashboard_address=":0"))
    try:
        r = Runner(tmp_path, client, progress=False).run(
            "parts", [Task(f"p{n}", write_or_die, dict(out=str(tmp_path), n=n)) for n in range(2)],
            outputs=(tmp_path / "parts",))
    finally:
        close_client(client)
    assert r.counters == {"parts": 2}
    assert sorted(p.read_text() for p in (tmp_path / "parts").iterdir()) == ["whole 0", "whole 1"]
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))
