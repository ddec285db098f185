"""The stage runner: markers written last, resume skips completed tasks, failures named, counters merged."""

import json
from pathlib import Path

import pytest

from tol_builder.fileio import TMP_PREFIX, TMP_SUFFIX, atomic_path
from tol_builder.runner import Runner, StageError, Task, marker_path, read_markers


def write_square(out: str, n: int, log: str, fail: bool = False) -> dict:
    """A plain task: appends to a log (to count runs), writes its output atomically, returns counters."""
    with open(log, "a") as f:
        f.write(f"{n}\n")
    if fail:
        raise RuntimeError(f"task {n} cannot read its input")
    with atomic_path(Path(out) / "squares" / f"{n}.txt") as tmp:
        tmp.write_text(str(n * n))
    return {"items": 1, "total": n * n}


def _tasks(out: Path, log: Path, fail: set[int] = frozenset()):
    return [Task(f"t{n}", write_square, dict(out=str(out), n=n, log=str(log), fail=n in fail)) for n in range(5)]


def _runs(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def test_markers_counters_and_resume(tmp_path):
    log = tmp_path / "log"
    r = Runner(tmp_path, progress=False)
    res = r.run("square", _tasks(tmp_path, log))
    assert res.counters == {"items": 5, "total": 0 + 1 + 4 + 9 + 16}
    assert (res.ran, res.skipped) == (5, 0)
    m = json.loads(marker_path(tmp_path, "square", "t3").read_text())
    assert m["counters"] == {"items": 1, "total": 9} and m["stage"] == "square"
    assert sorted(_runs(log)) == [0, 1, 2, 3, 4]
    res2 = r.run("square", _tasks(tmp_path, log))  # resume = run again: nothing left to do
    assert (res2.ran, res2.skipped) == (0, 5) and res2.counters == res.counters
    assert len(_runs(log)) == 5


def test_failed_task_is_named_others_complete_and_rerun_retries_only_it(tmp_path):
    log = tmp_path / "log"
    r = Runner(tmp_path, progress=False)
    with pytest.raises(StageError) as e:
        r.run("square", _tasks(tmp_path, log, fail={2}))
    assert "t2" in str(e.value) and "cannot read its input" in str(e.value)
    assert set(read_markers(tmp_path, "square")) == {"t0", "t1", "t3", "t4"}
    res = r.run("square", _tasks(tmp_path, log))
    assert res.ran == 1 and _runs(log).count(2) == 2 and _runs(log).count(0) == 1
    assert (tmp_path / "squares" / "2.txt").read_text() == "4"


def test_killed_writer_leaves_no_file_under_its_real_name(tmp_path):
    target = tmp_path / "out" / "part.parquet"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert not target.exists() and not list(target.parent.glob(f"{TMP_PREFIX}*"))
    # a leftover of a process killed with SIGKILL (no cleanup ran) is removed by the next run of the stage
    (tmp_path / "squares").mkdir()
    leftover = tmp_path / "squares" / f"{TMP_PREFIX}dead-0.txt{TMP_SUFFIX}"
    leftover.write_text("x")
    Runner(tmp_path, progress=False).run("square", _tasks(tmp_path, tmp_path / "log"),
                                         outputs=(tmp_path / "squares",))
    assert not leftover.exists() and len(list((tmp_path / "squares").glob("*.txt"))) == 5


def test_temp_names_never_match_the_readers_globs(tmp_path):
    target = tmp_path / "records" / "part.parquet"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        assert tmp.parent == target.parent and tmp.name.startswith(TMP_PREFIX)
        assert not list(target.parent.glob("*.parquet"))  # pathlib's * matches dot files: the suffix keeps it out
    assert [p.name for p in target.parent.glob("*.parquet")] == ["part.parquet"]


def test_unreadable_marker_means_not_done(tmp_path):
    log = tmp_path / "log"
    r = Runner(tmp_path, progress=False)
    r.run("square", _tasks(tmp_path, log))
    marker_path(tmp_path, "square", "t1").write_text("{trunc")
    res = r.run("square", _tasks(tmp_path, log))
    assert res.ran == 1 and _runs(log).count(1) == 2


def test_task_keys_are_checked():
    with pytest.raises(ValueError):
        Task("a/b", write_square)
    with pytest.raises(ValueError, match="duplicate"):
        Runner(Path("/tmp"), progress=False).run("s", [Task("a", write_square), Task("a", write_square)])


def test_runs_on_a_local_cluster(tmp_path):
    from tol_builder.cluster import close_client, get_client
    from tol_builder.config import ClusterConfig

    client = get_client(ClusterConfig(n_workers=2, threads_per_worker=1, dashboard_address=""))
    try:
        log = tmp_path / "log"
        res = Runner(tmp_path, client, progress=False).run("square", _tasks(tmp_path, log, fail={4}) [:4])
        assert res.counters["total"] == 0 + 1 + 4 + 9
        pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "_markers" / "square").glob("t*.json")}
        worker_pids = {w["pid"] for w in client.run(lambda: {"pid": __import__("os").getpid()}).values()}
        assert pids <= worker_pids and pids  # the tasks ran in the worker processes
    finally:
        close_client(client)
