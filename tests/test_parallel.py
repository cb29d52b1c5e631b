"""``facecli.parallel``: the one executor align, pack and eval use. Order, bounded memory, errors, Ctrl-C, crashes."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from facecli.errors import UsageError
from facecli.parallel import Executor, WorkerCrashed, _Handout, environment

REPO = Path(__file__).resolve().parents[1]


def _slow_square(item: int) -> int:
    time.sleep(0.002 * ((7 * item) % 5))  # later items often finish first
    return item * item


def _pid(item: int) -> tuple[int, int]:
    time.sleep(0.01)
    return os.getpid(), item


def _fail_on_five(item: int) -> int:
    if item == 5:
        raise UsageError("item 5 is bad")
    return os.getpid()


def _die_in_the_pool(item: int) -> int:
    if multiprocessing.parent_process() is not None:  # in a pool process only, never in pytest
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)
    return item


def _die_task() -> functools.partial:
    return functools.partial(_die_in_the_pool)


def _pid_task() -> functools.partial:
    return functools.partial(_pid)


def _setup_failing_in_the_pool() -> functools.partial:
    if multiprocessing.parent_process() is not None:
        raise UsageError("no detector in the pool")
    return functools.partial(_pid)


def _gone(pids: set[int], timeout: float = 10.0) -> bool:
    """Every process in ``pids`` has ended (and been reaped) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = set()
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.add(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("workers, threads", [(1, False), (3, True), (2, False)])
def test_map_keeps_the_input_order(workers, threads):
    with Executor(workers, threads=threads).map(_slow_square, range(40), in_flight=6) as results:
        assert list(results) == [i * i for i in range(40)]


@pytest.mark.parametrize("threads", [True, False])
def test_map_hands_out_at_most_in_flight_items_ahead(threads):
    pulled = 0

    def items():
        nonlocal pulled
        for i in range(30):
            pulled += 1
            yield i

    ahead = []
    with Executor(2, threads=threads).map(_slow_square, items(), in_flight=5) as results:
        for consumed, _ in enumerate(results, start=1):
            ahead.append(pulled - consumed)
            time.sleep(0.005)  # a slow consumer: the workers would run ahead if they could
    assert max(ahead) == 5 and pulled == 30  # handed out, not yet consumed: never more than in_flight


def test_workers_1_runs_everything_here_and_starts_nothing():
    executor = Executor(1)
    with executor.map(_pid, range(3)) as results:
        assert {pid for pid, _ in results} == {os.getpid()}
    with executor.share(_pid_task, list(range(3))) as results:
        assert [item for _, item in results] == [0, 1, 2]  # in order, here
    assert multiprocessing.active_children() == []


def test_share_uses_this_process_and_the_pool_and_returns_every_item():
    items = list(range(200))
    with Executor(2).share(_pid_task, items) as results:
        got = list(results)
    assert sorted(item for _, item in got) == items
    pids = {pid for pid, _ in got}
    assert os.getpid() in pids  # this process worked while the pool started
    assert len(pids) == 2  # and one pool process did too


def test_items_are_handed_out_in_the_callers_order_to_whoever_is_free():
    handout = _Handout(["d", "b", "c", "a"])  # align passes the biggest file first
    taken = [handout.take(), handout.take(for_pool=True), handout.take(for_pool=True)]
    assert taken == [0, 1, 2] and handout.sent == 2
    handout.close()
    assert handout.take() is None and handout.sent == 2


@pytest.mark.parametrize("threads", [True, False])
def test_an_exception_in_a_task_is_raised_once_and_stops_the_workers(threads):
    pids: set[int] = set()
    with pytest.raises(UsageError, match="^item 5 is bad$"):
        with Executor(2, threads=threads).map(_fail_on_five, range(100), in_flight=4) as results:
            for pid in results:
                pids.add(pid)
    if not threads:
        assert pids and os.getpid() not in pids
        assert _gone(pids)


def test_a_setup_that_fails_in_the_pool_is_raised_by_its_tasks():
    with pytest.raises(UsageError, match="no detector in the pool"):
        with Executor(2).share(_setup_failing_in_the_pool, list(range(40))) as results:
            list(results)


def test_a_worker_that_dies_is_one_clear_error():
    with pytest.raises(WorkerCrashed, match="ended abruptly"):
        with Executor(2).map(_die_in_the_pool, range(10)) as results:
            list(results)
    with pytest.raises(WorkerCrashed):
        with Executor(3).share(_die_task, list(range(500))) as results:
            list(results)


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_the_main_guard_is_told_why_its_workers_died(tmp_path, guarded):
    """Workers import the user's script again before they start (fork server), so an unguarded script's workers
    die; the one-line error names the guard, and the same script with the guard just works."""
    body = "with Executor(2).map(abs, [-3, -2, -1]) as results:\n    print(list(results))\n"
    if guarded:
        body = 'if __name__ == "__main__":\n' + textwrap.indent(body, "    ")
    script = tmp_path / "user_script.py"
    script.write_text("from facecli.parallel import Executor\n" + body)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    if guarded:
        assert (done.returncode, done.stdout) == (0, "[3, 2, 1]\n"), done.stderr[-1500:]
    else:
        assert done.returncode == 1
        assert f'{script} calls facecli without `if __name__ == "__main__":`' in done.stderr.splitlines()[-1]


def test_a_consumer_that_stops_early_leaves_no_process_behind():
    with Executor(2).map(_pid, range(1000)) as results:
        pids = {next(results)[0], next(results)[0]}
    assert _gone(pids | {p.pid for p in multiprocessing.active_children() if p.pid is not None})


_CTRL_C_SCRIPT = textwrap.dedent(
    """
    import functools, os, sys, time
    sys.path.insert(0, {tests!r})
    from facecli.parallel import Executor
    from test_parallel import _pid_task

    if __name__ == "__main__":  # the workers import this file too
        with Executor(3).share(_pid_task, list(range(10000))) as results:
            for pid, _ in results:
                print(pid, flush=True)
    """
)


def test_ctrl_c_stops_every_worker_and_leaves_no_process_behind(tmp_path):
    """A real Ctrl-C: SIGINT to the whole process group, as a terminal sends it."""
    script = tmp_path / "run.py"
    script.write_text(_CTRL_C_SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    pids: set[int] = set()
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while len(pids - {proc.pid}) < 2 and time.monotonic() < deadline:  # both pool processes are working
        line = proc.stdout.readline()
        if not line:
            break
        pids.add(int(line))
    workers = pids - {proc.pid}
    assert len(workers) == 2, proc.stderr.read() if proc.poll() is not None else "no pool results in 60 s"
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    assert stderr.count("Traceback") == 1  # only this process's: the workers ignore SIGINT and were stopped
    assert _gone(workers)


def test_thread_mode_runs_in_this_process_on_other_threads():
    main = threading.get_ident()
    with Executor(2, threads=True).map(lambda _: (os.getpid(), threading.get_ident()), range(8)) as results:
        got = list(results)
    assert {pid for pid, _ in got} == {os.getpid()} and main not in {ident for _, ident in got}


def test_the_fork_server_starts_without_blas_threads_unless_asked(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("FACECLI_TEST_KEPT", "mine")
    with environment({"OPENBLAS_NUM_THREADS": "1", "FACECLI_TEST_KEPT": "theirs"}):
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1" and os.environ["FACECLI_TEST_KEPT"] == "mine"
    assert "OPENBLAS_NUM_THREADS" not in os.environ and os.environ["FACECLI_TEST_KEPT"] == "mine"
