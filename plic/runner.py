"""One command over many files on many workers: ``--jobs N`` worker processes on this machine,
or the tasks and actors of a Ray cluster (``--ray ADDRESS``); see docs/scale.md.

A :class:`Work` is what a command does to its files. Each worker opens it once (loads its
models, on its device) and then runs it on a few files at a time; every file gives one
:class:`Row`, ``done`` or ``failed`` (one bad file never ends the run), and the driver writes
each row to the manifest (JSONL) as it comes, prints what the worker printed for it, and keeps
one progress line. Before any work, outputs that already exist and check out are ``skipped``
rows (so the same command run again finishes what is left), and the temporary files a killed
worker left beside them are deleted.

Outputs are the same bytes whatever worker writes them: the work of a file depends on the file
and the settings only (each decoded file keeps its own seed).

A worker process that dies (killed, out of memory) breaks the pool: the files it and its peers
had in hand run again in a fresh pool, one at a time, and a file whose worker dies twice is a
failed row. On Ray the cluster retries the task (or restarts the actor) once; a second death is
a failed row too.

Ray is imported only by :func:`connect`, for ``--ray``.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import signal
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from plic.atomic import leftover_temporaries
from plic.batch import clash
from plic.deps import require
from plic.errors import PlicError, one_line

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
#: The manifest's keys, in this order on every line.
MANIFEST_KEYS = ("input", "output", "bytes", "bpp", "seconds", "worker", "status", "error")
#: What a failed row says when its worker died twice with the file in hand.
DIED = "the worker process died twice while working on it (out of memory, or killed)"


@dataclass(frozen=True)
class Task:
    """One file: its input, its output (what a rerun checks) and whatever else the work needs
    for it (``extra``: eval's reconstruction and .plic)."""

    source: Path
    target: Path
    extra: tuple = ()


@dataclass
class Row:
    """What became of one file: the manifest's fields, plus what the worker printed (``out``,
    ``err``) and the result it hands back to the driver (``value``, e.g. ``plic eval``'s scores)."""

    input: str
    output: str
    status: str
    bytes: int | None = None
    bpp: float | None = None
    seconds: float = 0.0
    worker: str = ""
    error: str = ""
    out: str = field(default="", repr=False)
    err: str = field(default="", repr=False)
    value: object = field(default=None, repr=False)

    def manifest(self) -> dict:
        return {key: getattr(self, key) for key in MANIFEST_KEYS}


class Work:
    """What a command does to its files. Instances travel to the workers (pickled), so they
    hold settings, never loaded models: :meth:`open` loads those in each worker."""

    #: Files handed to a worker at once (decode: one pipeline call for neighbours of a size).
    batch_size = 1
    #: Whether each worker needs a device of its own (decode: one pipeline per GPU), and
    #: whether that is a cluster's GPUs when it has some (not when decoding on the CPU is asked).
    on_devices = False
    on_gpus = False

    def open(self, device: str | None):
        """What a worker needs for every file (models, a captioner); called once per worker."""
        return None

    def run(self, opened, tasks: list[Task]) -> list[Row]:
        """One row per task (in order), failures included; by default :meth:`run_one` each."""
        return [attempt(task, lambda task=task: self.run_one(opened, task)) for task in tasks]

    def run_one(self, opened, task: Task) -> tuple[int | None, float | None, object]:
        """Do one file; (bytes, bpp, value) for its row. Raise to fail it."""
        raise NotImplementedError

    def check(self, task: Task) -> tuple[int | None, float | None, object]:
        """(bytes, bpp, value) of a file whose output exists and checks out, as
        :meth:`run_one` gave them; raise PlicError if it does not (then it is redone with
        --overwrite, and failed without)."""
        raise NotImplementedError


def attempt(task: Task, do, seconds_share: float | None = None) -> Row:
    """The row of running ``do()`` -> (bytes, bpp, value) for ``task``, with what it printed;
    any exception (a bug included) fails this file only. Ctrl-C is not caught."""
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            size, bpp, value = do()
        row = Row(str(task.source), str(task.target), DONE, size, _rounded(bpp), value=value)
    except Exception as exc:  # one bad file is one failed row
        row = Row(str(task.source), str(task.target), FAILED, error=error_line(task, exc))
    row.seconds = round(time.perf_counter() - start if seconds_share is None else seconds_share, 4)
    row.worker, row.out, row.err = _WORKER["name"], out.getvalue(), err.getvalue()
    return row


def failed(task: Task, error: str) -> Row:
    """The failed row of a file no worker finished (no worker named)."""
    return Row(str(task.source), str(task.target), FAILED, error=error)


def error_line(task: Task, exc: BaseException) -> str:
    """``exc`` on one line naming the file (a PlicError usually does; a bug gets its type)."""
    message = one_line(exc) if isinstance(exc, PlicError) else f"{type(exc).__name__}: {one_line(exc)}"
    named = str(task.source) in message or str(task.target) in message
    return message if named else f"{task.source}: {message}"


def _rounded(bpp: float | None) -> float | None:
    return None if bpp is None else round(bpp, 6)


@dataclass(frozen=True)
class Options:
    """How to run: ``jobs`` worker processes (None or 1: in this process), or on the Ray
    cluster at ``ray`` ("auto", "local" or an address; then ``jobs`` caps the tasks in flight,
    default the cluster's CPUs, or sets the CPUs of a "local" cluster); ``devices`` pins one
    worker to each (decode); the manifest goes to ``manifest``; ``overwrite`` redoes outputs
    that exist."""

    manifest: Path
    jobs: int | None = None
    ray: str | None = None
    devices: tuple[str, ...] = ()
    overwrite: bool = False


def run(work: Work, tasks: list[Task], options: Options, stream=None) -> list[Row]:
    """Run ``work`` on every task and return their rows in task order (see the module's
    docstring). Interrupted (Ctrl-C), the rows so far are in the manifest and no partial output
    is left."""
    stream = stream or sys.stderr
    if options.jobs is not None and options.jobs < 1:
        raise PlicError(f"--jobs must be at least 1, got {options.jobs}")
    rows: dict[int, Row] = {}
    for path in leftover_temporaries([task.target for task in tasks]):
        path.unlink(missing_ok=True)
    with Manifest(options.manifest) as manifest:
        progress = Progress(len(tasks), stream)

        def record(index: int, row: Row) -> None:
            rows[index] = row
            manifest.write(row)
            progress.show(row)

        todo = []
        for index, row in _before(work, tasks, options.overwrite):
            if row is None:
                todo.append(index)
            else:
                record(index, row)
        chunks = [todo[i:i + work.batch_size] for i in range(0, len(todo), work.batch_size)]
        job = _Job(work, uuid.uuid4().hex)
        try:
            if not chunks:
                results = iter(())
            elif options.ray is not None:
                results = _on_ray(job, tasks, chunks, options)
            elif (options.jobs or 1) == 1 and len(options.devices) <= 1:
                results = _here(job, tasks, chunks, options.devices[0] if options.devices else None)
            else:
                results = _in_pool(job, tasks, chunks, options, progress)
            for index, row in results:
                record(index, row)
        finally:
            progress.close()
    return [rows[index] for index in sorted(rows)]


def _before(work: Work, tasks: list[Task], overwrite: bool) -> Iterator[tuple[int, Row | None]]:
    """(index, row) for each task settled before any work (a clash of outputs, an output that
    exists), (index, None) for those to do."""
    first: dict[Path, Path] = {}
    for index, task in enumerate(tasks):
        if task.target in first:
            yield index, failed(task, error_line(task, clash(task.source, task.target, first[task.target])))
            continue
        first[task.target] = task.source
        if overwrite or not task.target.exists():
            yield index, None
            continue
        try:
            size, bpp, value = work.check(task)
            yield index, Row(str(task.source), str(task.target), SKIPPED, size, _rounded(bpp), value=value)
        except PlicError as exc:
            yield index, failed(task, f"{task.target}: exists but does not check out "
                                      f"({one_line(exc)}); pass --overwrite to replace it")


# -- the workers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    """The work of one run, with a token that tells a reused worker process (Ray's) that it
    has already opened it."""

    work: Work
    token: str


#: The state of this process as a worker: its name in the manifest, the run whose work it has
#: opened, and whether it is working on a file (Ctrl-C interrupts it only then).
_WORKER: dict = {"name": f"{socket.gethostname()}:{os.getpid()}", "token": None, "opened": None,
                 "busy": False}


def _open(job: _Job, device: str | None):
    """``job``'s work opened in this process, once per run."""
    if _WORKER["token"] != job.token:
        _WORKER["name"] = _worker_name(device)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            _WORKER["opened"] = job.work.open(device)  # its chatter (progress bars) is not a file's
        _WORKER["token"] = job.token
    return _WORKER["opened"]


def _worker_name(device: str | None) -> str:
    """host:pid, the Ray node when on Ray, and the device: the manifest's ``worker``."""
    ray = sys.modules.get("ray")
    node = f" node {ray.get_runtime_context().get_node_id()[:8]}" if ray and ray.is_initialized() else ""
    return f"{socket.gethostname()}:{os.getpid()}{node}" + (f" {device}" if device else "")


def _run_chunk(job: _Job, tasks: list[Task], device: str | None = None) -> list[Row]:
    """The rows of ``tasks`` in this worker. A failure to open the work (models missing)
    raises: it ends the run, as it would end every file."""
    opened = _open(job, device)
    _WORKER["busy"] = True
    try:
        return job.work.run(opened, tasks)
    finally:
        _WORKER["busy"] = False


def _here(job: _Job, tasks: list[Task], chunks: list[list[int]], device: str | None):
    for chunk in chunks:
        yield from zip(chunk, _run_chunk(job, [tasks[i] for i in chunk], device))


# -- worker processes on this machine ------------------------------------------------------------

def _start_worker(job: _Job, devices) -> None:
    """Pool initializer: take a device (one per worker), and let Ctrl-C stop a file in hand
    (its temporary output is removed) but not an idle worker, which the pool ends."""
    _WORKER["device"] = devices.get() if devices is not None else None
    signal.signal(signal.SIGINT, _interrupt_when_busy)


def _interrupt_when_busy(signum, frame) -> None:
    if _WORKER["busy"]:
        raise KeyboardInterrupt


def _pool_chunk(job: _Job, tasks: list[Task]) -> list[Row]:
    return _run_chunk(job, tasks, _WORKER["device"])


def _in_pool(job: _Job, tasks: list[Task], chunks: list[list[int]], options: Options, progress):
    """(index, row) from ``len(devices)`` or ``jobs`` spawned processes. After a worker died,
    the chunks in flight run again one at a time in a fresh pool; a chunk in flight at a second
    death fails."""
    workers = len(options.devices) or options.jobs
    todo = deque(range(len(chunks)))
    deaths: dict[int, int] = {}
    context = multiprocessing.get_context("spawn")
    while todo:
        devices = None
        if options.devices:
            devices = context.Queue()
            for device in options.devices:
                devices.put(device)
        broken: list[int] = []
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                   initargs=(job, devices))
        in_flight: dict = {}
        try:
            while (todo or in_flight) and not broken:
                while todo and len(in_flight) < workers and not any(deaths.get(c) for c in in_flight.values()):
                    if deaths.get(todo[0]) and in_flight:
                        break  # a chunk that was in hand at a death runs alone
                    number = todo.popleft()
                    in_flight[pool.submit(_pool_chunk, job, [tasks[i] for i in chunks[number]])] = number
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    number = in_flight.pop(future)
                    try:
                        rows = future.result()
                    except BrokenProcessPool:
                        broken.append(number)
                        continue
                    yield from zip(chunks[number], rows)
            if broken:
                broken += in_flight.values()
                in_flight.clear()
                again = []
                for number in broken:
                    deaths[number] = deaths.get(number, 0) + 1
                    if deaths[number] > 1:
                        yield from ((i, failed(tasks[i], f"{tasks[i].source}: {DIED}")) for i in chunks[number])
                    else:
                        again.append(number)
                todo.extendleft(reversed(again))
                progress.note(f"a worker process died; {sum(len(chunks[n]) for n in again)} files it or "
                              "its peers had in hand run again, one batch at a time")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# -- Ray -----------------------------------------------------------------------------------------

def connect(address: str, cpus: int | None = None):
    """The ``ray`` module, connected to the cluster at ``address``: "auto" (the one this
    machine belongs to), "local" (start one here, with ``cpus`` CPUs) or an address
    (HOST:PORT, ray://HOST:10001)."""
    ray = require("ray", package="ray", purpose="--ray", install='"comfyui-plic[ray]" (or: pip install ray)')
    quiet = {"logging_level": "ERROR", "log_to_driver": False}
    host, _, port = address.rpartition("://")[2].rpartition(":")
    try:
        if port.isdigit():  # Ray itself would retry a wrong address for minutes
            socket.create_connection((host, int(port)), timeout=10).close()
        if address == "local":
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (OSError, ValueError, RuntimeError) as exc:  # ConnectionError is an OSError
        raise PlicError(f"--ray {address}: cannot connect to a Ray cluster there ({one_line(exc)}); "
                        "start one with `ray start --head`, or pass --ray local") from None
    return ray


class _Actor:
    """A Ray actor holding the opened work (a decode pipeline) on its device, run a chunk at a time."""

    def __init__(self, job: _Job, device: str):
        self.job, self.device = job, device  # opened at the first chunk: an error there ends the run

    def run(self, tasks: list[Task]) -> list[Row]:
        return _run_chunk(self.job, tasks, self.device)


def _on_ray(job: _Job, tasks: list[Task], chunks: list[list[int]], options: Options):
    """(index, row) from Ray: a task per chunk (CPU work) or an actor per device (work on
    devices: one per GPU of the cluster, else ``jobs`` CPU actors, else one per node)."""
    ray = connect(options.ray, options.jobs)
    try:
        resources = ray.cluster_resources()
        if job.work.on_devices:
            gpus = int(resources.get("GPU", 0)) if job.work.on_gpus else 0
            count = gpus or options.jobs or len([node for node in ray.nodes() if node["Alive"]])
            actor = ray.remote(_Actor).options(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
                                               max_restarts=1, max_task_retries=1)
            workers = [actor.remote(job, "cuda" if gpus else "cpu") for _ in range(count)]
            submit = lambda worker, tasks_: worker.run.remote(tasks_)
        else:
            count = options.jobs or max(1, int(resources.get("CPU", 1)))
            task = ray.remote(_run_chunk).options(num_cpus=1, max_retries=1)
            shared = ray.put(job)
            workers = [None] * count
            submit = lambda worker, tasks_: task.remote(shared, tasks_)
        yield from _ray_rows(ray, tasks, chunks, workers, submit)
    finally:
        ray.shutdown()


def _ray_rows(ray, tasks, chunks, workers, submit):
    """Keep every worker (an actor, or a task slot) busy with one chunk and hand back rows as
    they come. A chunk whose worker died twice fails, and a dead actor takes no more work; an
    error opening the work ends the run."""
    todo = deque(range(len(chunks)))
    idle = list(workers)
    in_flight: dict = {}
    try:
        while todo or in_flight:
            while todo and idle:
                worker, number = idle.pop(), todo.popleft()
                in_flight[submit(worker, [tasks[i] for i in chunks[number]])] = (worker, number)
            if not in_flight:  # every actor died
                for number in todo:
                    yield from ((i, failed(tasks[i], f"{tasks[i].source}: not done: every worker died"))
                                for i in chunks[number])
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            worker, number = in_flight.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:  # opening the work failed
                cause = getattr(exc, "cause", None)
                raise cause if isinstance(cause, PlicError) else PlicError(one_line(exc)) from None
            except ray.exceptions.RayError as exc:  # the worker died, and again on the retry
                rows = [failed(tasks[i], f"{tasks[i].source}: {DIED} ({type(exc).__name__})")
                        for i in chunks[number]]
                if isinstance(exc, ray.exceptions.RayActorError):
                    worker = _DEAD
            yield from zip(chunks[number], rows)
            if worker is not _DEAD:
                idle.append(worker)
    finally:  # interrupted or ended by an error: stop what is still running (best effort)
        for ref in in_flight:
            with contextlib.suppress(ray.exceptions.RayError, ValueError, TypeError):
                ray.cancel(ref)


_DEAD = object()


# -- the manifest and the progress line ----------------------------------------------------------

class Manifest:
    """The JSONL manifest: one line per file as its row comes, appended (a rerun adds its own
    lines; the last line of an input is its state)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> "Manifest":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise PlicError(f"{self.path}: the manifest cannot be written ({exc.strerror or exc}); "
                            "choose another with --manifest") from None
        return self

    def write(self, row: Row) -> None:
        self.file.write(json.dumps(row.manifest()) + "\n")
        self.file.flush()

    def __exit__(self, *exc) -> None:
        self.file.close()


class Progress:
    """One line for the whole run on ``stream``: files done (skipped included), failed, files
    per second and time left; redrawn in place on a terminal, else written every
    :attr:`every` seconds and at the end. What each file printed goes above it."""

    every = 30.0
    #: The least time between two redraws on a terminal (a rerun skips thousands of files a second).
    redraw = 0.2

    def __init__(self, total: int, stream):
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.done = self.failed = self.worked = self.skipped = 0
        self.start = self.shown = time.monotonic()

    def show(self, row: Row) -> None:
        self.failed += row.status == FAILED
        self.done += row.status != FAILED
        self.skipped += row.status == SKIPPED
        self.worked += row.status != SKIPPED
        now = time.monotonic()
        due = now - self.shown >= (self.redraw if self.tty else self.every)
        said = row.out or row.err or row.status == FAILED
        if said:
            self._clear()
            sys.stdout.write(row.out)
            sys.stdout.flush()
            self.stream.write(row.err + (f"plic: {row.error}\n" if row.status == FAILED else ""))
        if due or (said and self.tty):
            self._line(now)

    def note(self, text: str) -> None:
        self._clear()
        self.stream.write(f"plic: {text}\n")

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.worked / elapsed
        left = self.total - self.done - self.failed
        text = (f"plic: {self.done}/{self.total} done" + (f" ({self.skipped} skipped)" if self.skipped else "")
                + f", {self.failed} failed, {rate:.2f} files/s")
        if left == 0:
            return text + f", finished in {_duration(elapsed)}"
        return text + f", {_duration(left / rate) if rate > 0 else '?'} left"

    def close(self) -> None:
        self._clear()
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def _line(self, now: float) -> None:
        self.shown = now
        self.stream.write(self.line(now) + ("" if self.tty else "\n"))
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
