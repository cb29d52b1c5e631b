"""One way to run work in parallel: align, pack and eval's on-the-fly alignment all go through :class:`Executor`.

Shared ground below the stages (it imports none of them). Two ways to hand out work, one set of rules for
starting, stopping and failing:

* :meth:`Executor.map`: ``map(fn, items)`` in input order, with at most ``in_flight`` items handed out ahead of
  the consumer, so memory stays bounded however long ``items`` is (pack's batches of images; eval's face loading).
* :meth:`Executor.share`: this process works too, and results come back as they finish. Items are handed out in
  the caller's order to whichever process is free (align gives the biggest file left, so only small files remain at
  the end and the processes finish together). The pool starts on a background thread (about a second: a fork
  server importing the callers' runtime) while this process already computes; each pool process is kept two items
  deep, and is handed its next item from the pool's result thread the moment a result arrives.

Processes, and why:

* **Never plain fork.** The caller may already run OpenCV/onnxruntime/rich threads (a library user, the test
  suite, a progress bar), and a child forked while one of them holds a lock hangs. Workers come from a fork
  server, a fresh process, started as soon as the :class:`Executor` is made (so its imports overlap with the
  caller's planning) and preloading the modules the caller names, so each worker starts with them imported.
  Where the server cannot start (a ``TMPDIR`` too long for its socket path) workers are fresh interpreters.
* **One thread per worker unless asked.** numpy's OpenBLAS would start a thread per core in the fork server, and
  they busy-wait about 0.1 s before they sleep; the server starts with :data:`SINGLE_THREADED_BLAS` unless the
  caller's environment says otherwise.
* **Stopping.** Workers ignore SIGINT: Ctrl-C reaches this process, which stops (terminates) every worker before
  the interrupt goes on, as it does for any exception in a task or in the caller's loop. Nothing is left behind.
* **Failing.** A task's exception reaches the caller once, as itself (a :class:`facecli.errors.FacecliError`
  keeps its one-line message), and the pool is stopped. A worker's set-up that fails is raised by each of its
  tasks rather than breaking the pool at start. A worker that dies (killed, out of memory) is
  :class:`WorkerCrashed`, one line, instead of a run that waits forever.
* **workers=1** runs everything in this process: nothing is started.

Threads (``threads=True``): the same ordered map on threads, for work that must stay in this process (closures over
a model or a shared detector, results recorded in the caller's objects); decoding and alignment in OpenCV and
onnxruntime release the GIL, and the consumer's own work overlaps with the threads'.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor as FuturesExecutor
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from typing import Any, TypeVar

from facecli.errors import FacecliError

Item = TypeVar("Item")
Result = TypeVar("Result")

# Pool processes compute on one thread by design; see the module docstring.
SINGLE_THREADED_BLAS = {"OPENBLAS_NUM_THREADS": "1"}


class WorkerCrashed(FacecliError):
    """A worker process ended abruptly (killed by a signal, out of memory) while it had work."""


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def environment(defaults: Mapping[str, str]) -> Iterator[None]:
    """Environment variables not already set take these values inside the block (for a child started there)."""
    added = {name: value for name, value in defaults.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def process_context(preload: Sequence[str] = (), env: Mapping[str, str] = SINGLE_THREADED_BLAS) -> Any:
    """The multiprocessing context for worker processes; its fork server starts now, in the background, with
    ``preload`` imported and ``env`` set (see the module docstring). The fork server is one per process: the first
    caller's preloads are the ones it has."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    try:
        with environment(env):
            forkserver.ensure_running()
    except OSError:  # its socket cannot be made (a TMPDIR too long for a socket path): fresh interpreters instead
        return multiprocessing.get_context("spawn")
    return ctx


# ---------------------------------------------------------------------------------------------- in a worker

_WORKER: dict[str, Any] = {}  # in each pool process of Executor.share: the task its set-up built, or its error


def _start_worker(setup: Callable[[], Callable[[Any], Any]] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    if setup is None:
        return
    try:
        _WORKER["task"] = setup()
    except Exception as exc:  # raising here would break the pool at start; each task reports it instead
        _WORKER["error"] = exc


def _run_task(item: Any) -> Any:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return _WORKER["task"](item)


# ---------------------------------------------------------------------------------------------- in this process


def _crash_message() -> str:
    """Why a worker may have died. Started from a Python script, each worker first imports that script again (as
    every fork server or spawn start does), so a script that calls facecli at the top level, without
    ``if __name__ == "__main__":``, kills its workers before they start: the message says so then."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__spec__", None) is None and getattr(main, "__file__", None)
    why = "killed, or out of memory?"
    if script:
        why = f'killed, out of memory, or {script} calls facecli without `if __name__ == "__main__":`?'
    return f"a worker process ended abruptly ({why}); the run was stopped"


def _outcome(value: Any) -> Any:
    """A result, or the exception a task or a dead worker produced, raised here."""
    if isinstance(value, BrokenProcessPool):
        raise WorkerCrashed(_crash_message()) from None
    if isinstance(value, BaseException):
        raise value
    return value


def _stop(pool: FuturesExecutor) -> None:
    """Stop ``pool`` now: queued items are dropped and pool processes are terminated, not waited for (a worker
    tearing down its runtime, or busy with a large item, would only delay the caller)."""
    if isinstance(pool, ProcessPoolExecutor):
        terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
        if terminate is not None:
            terminate()
        else:  # the same by hand: before 3.14 the pool's processes are only reachable through this attribute
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


class _Handout:
    """Items in the caller's order, taken by whichever process is free: this one, or the pool as each result
    comes back. ``sent`` counts what the pool was given."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items
        self._next = 0
        self._lock = threading.Lock()
        self.sent = 0

    def take(self, for_pool: bool = False) -> int | None:
        """The index of the next item, or None when every item is handed out."""
        with self._lock:
            if self._next == len(self.items):
                return None
            self._next += 1
            self.sent += for_pool
            return self._next - 1

    def close(self) -> None:
        """Hand out nothing more (the run is over or being abandoned)."""
        with self._lock:
            self._next = len(self.items)


class Executor:
    """Runs a task over many items: in this process (``workers`` 1), on ``workers`` threads (``threads``), or
    with worker processes (see the module docstring). Making one with processes starts the fork server."""

    def __init__(self, workers: int, *, threads: bool = False, preload: Sequence[str] = ()) -> None:
        self.workers = max(1, int(workers))
        self.threads = threads
        self._context = process_context(preload) if self.workers > 1 and not threads else None

    @contextlib.contextmanager
    def map(
        self, fn: Callable[[Item], Result], items: Iterable[Item], in_flight: int | None = None
    ) -> Iterator[Iterator[Result]]:
        """``map(fn, items)`` in order, with at most ``in_flight`` items (default ``4 * workers``) handed out and
        not yet consumed. With processes, ``fn`` and the items must pickle; each item is one task, so callers pass
        batches of small things. Workers are stopped when the block ends, all results consumed or not."""
        if self.workers == 1 and not self.threads:
            yield map(fn, items)
            return
        pool: FuturesExecutor
        if self.threads:
            pool = ThreadPoolExecutor(max_workers=self.workers)
        else:
            pool = ProcessPoolExecutor(self.workers, mp_context=self._context, initializer=_start_worker,
                                       initargs=(None,))
        try:
            yield self._ordered(pool, fn, iter(items), in_flight or 4 * self.workers)
        finally:
            _stop(pool)

    @staticmethod
    def _ordered(pool: FuturesExecutor, fn: Callable[[Item], Result], items: Iterator[Item],
                 in_flight: int) -> Iterator[Result]:
        pending: deque[Future] = deque(pool.submit(fn, item) for item in itertools.islice(items, in_flight))
        while pending:
            future = pending.popleft()
            error = future.exception()
            result = _outcome(error) if error is not None else future.result()
            pending.extend(pool.submit(fn, item) for item in itertools.islice(items, 1))  # refill what was taken
            yield result

    @contextlib.contextmanager
    def share(self, setup: Callable[[], Callable[[Item], Result]], items: Sequence[Item]) -> Iterator[Iterator[Result]]:
        """Results of ``task(item)`` for every item, as they finish, computed here and, with processes, in a pool
        of ``workers - 1`` processes (see the module docstring). ``setup()`` builds ``task`` once in every process
        that computes (a detector, say): picklable, as it travels to the pool. Without a pool (one worker, one
        item) everything runs here in order."""
        if self._context is None or len(items) < 2:
            task = setup()
            yield (task(item) for item in items)
            return
        size = min(self.workers - 1, len(items) - 1)
        handout = _Handout(items)
        finished: queue.SimpleQueue = queue.SimpleQueue()  # filled by the pool's result thread
        with ThreadPoolExecutor(1) as starter:
            started = starter.submit(self._start_pool, size, setup, handout, finished)
            try:
                yield self._shared_results(started, setup, handout, finished)
            finally:
                # Every result has been collected (or the run is being abandoned): stop the workers instead of
                # waiting for them to tear down their runtimes one by one. A pool that failed to start has nothing
                # to stop.
                handout.close()
                if started.exception() is None:
                    _stop(started.result())

    def _start_pool(self, size: int, setup: Callable[[], Callable[[Item], Result]], handout: _Handout,
                    finished: queue.SimpleQueue) -> ProcessPoolExecutor:
        """Start ``size`` pool processes and keep each of them two items deep: one running, one waiting."""
        pool = ProcessPoolExecutor(size, mp_context=self._context, initializer=_start_worker, initargs=(setup,))

        def submit() -> None:
            index = handout.take(for_pool=True)
            if index is None:
                return
            try:
                pool.submit(_run_task, handout.items[index]).add_done_callback(done)
            except Exception as exc:  # stopped, broken, or a worker that cannot start: the caller waits for this item
                finished.put(exc)

        def done(future: Future) -> None:
            if future.cancelled():
                return
            error = future.exception()
            finished.put(error if error is not None else future.result())
            if error is None:
                submit()

        for _ in range(2 * size):
            submit()
        return pool

    @staticmethod
    def _shared_results(started: Future, setup: Callable[[], Callable[[Item], Result]], handout: _Handout,
                        finished: queue.SimpleQueue) -> Iterator[Result]:
        """Compute items here while passing on the pool's results as they arrive; then wait for its last ones."""
        received = 0
        task: Callable[[Item], Result] | None = None
        while True:
            while not finished.empty():
                received += 1
                yield _outcome(finished.get())
            error = started.exception() if started.done() else None
            if error is not None:  # the pool could not start
                raise error
            index = handout.take()
            if index is None:
                break
            if task is None:
                task = setup()
            yield task(handout.items[index])
        while received < handout.sent:  # every item is handed out; the pool's last ones are still running
            received += 1
            yield _outcome(finished.get())
