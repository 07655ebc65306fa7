"""Files per second of ``plic encode`` over a folder: ``--jobs 1``, ``--jobs 2`` and ``--ray`` on a
cluster of two nodes started here (``ray.cluster_utils.Cluster``, one CPU each), as ratios to
``--jobs 1`` in the same run, the outputs checked to be the same bytes; then what each way of
running adds per file, from a file that takes no time (:class:`Touch`).

    python -m bench.scale                 # --copies N (the test images N times, default 4)
                                          # --touch N (files of the overhead runs, default 400)
                                          # --rounds N (default 3)

Wall time of the whole command, as a user waits for it (Python start, worker start, Ray
connection), without starting the cluster (on a real one it is up already; its start is shown).
The modes take turns, ``--rounds`` times, and each keeps its fastest round (on a shared machine
the other users' load only ever adds time). The CPU seconds per file (the command, its workers
and the cluster's processes) say what the work costs whatever the load: with the same CPU time
per file, N idle cores give N times the rate.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plic import runner

REPO = Path(__file__).resolve().parents[1]

IMAGES = REPO / "tests" / "data"
NODE = {"num_cpus": 1, "object_store_memory": 150 * 2**20}


class Touch(runner.Work):
    """Writes one byte per file: what remains is the cost of handing files to workers."""

    def run_one(self, opened, task):
        task.target.write_bytes(b"x")
        return 1, None, None


def encode(folder: Path, out: Path, *options: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``plic encode folder -o out`` with ``options``. The CPU
    time is that of every process the run used: the command and the workers it waited for (its
    resource usage once ended), and with ``--ray`` the cluster's processes (this process's
    other descendants, sampled while it runs: a job's Ray workers end with it)."""
    import psutil

    def cluster(command: int | None) -> dict[int, float]:
        """CPU seconds of each of this process's descendants outside ``command``'s tree."""
        try:
            own = {command} | {p.pid for p in psutil.Process(command).children(recursive=True)}
        except (psutil.Error, ValueError):  # the command has ended, or is not started
            own = {command}
        times = {}
        for process in psutil.Process().children(recursive=True):
            if process.pid not in own:
                try:
                    cpu = process.cpu_times()
                except psutil.Error:
                    continue
                times[process.pid] = cpu.user + cpu.system
        return times

    def finished() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    on_ray = "--ray" in options
    before, first = finished(), cluster(None) if on_ray else {}
    seen = dict(first)
    log = out.parent / f"{out.name}.log"
    start = time.perf_counter()
    with open(log, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "plic", "encode", str(folder), "-o", str(out),
                                    "--prompt", "a test image", *options], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        while process.poll() is None:
            if on_ray:
                seen.update(cluster(process.pid))
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"plic encode {' '.join(options)} failed: {log.read_text()}")
    if on_ray:
        seen.update(cluster(process.pid))
    return wall, finished() - before + sum(cpu - first.get(pid, 0.0) for pid, cpu in seen.items())


def touch(root: Path, count: int, **options) -> float:
    """Seconds :class:`Touch` takes through the runner for ``count`` files."""
    out = root / f"touch-{count}-{len(list(root.iterdir()))}"
    out.mkdir()
    tasks = [runner.Task(out / f"{i}.in", out / f"{i}.out") for i in range(count)]
    start = time.perf_counter()
    runner.run(Touch(), tasks, runner.Options(manifest=out / "m.jsonl", **options), io.StringIO())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--touch", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="plic-scale-") as tmp:
        root = Path(tmp)
        folder = root / "images"
        folder.mkdir()
        for copy in range(args.copies):
            for image in sorted(IMAGES.glob("*.png")) + sorted(IMAGES.glob("*.jpg")):
                shutil.copy(image, folder / f"{copy}-{image.name}")
        files = len(list(folder.iterdir()))
        start = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **NODE})
        try:
            cluster.add_node(**NODE)
            cluster.wait_for_nodes()
            cluster_start = time.perf_counter() - start
            modes = {"--jobs 1": ("--jobs", "1"), "--jobs 2": ("--jobs", "2"),
                     "--ray (2 nodes)": ("--ray", cluster.address)}
            seconds = {name: (float("inf"), float("inf")) for name in modes}
            outputs = {}
            for turn in range(args.rounds):
                for name, options in modes.items():
                    out = root / f"out-{turn}-{len(outputs)}"
                    wall, cpu = encode(folder, out, *options)
                    seconds[name] = (min(seconds[name][0], wall), min(seconds[name][1], cpu))
                    outputs[out] = {p.name: p.read_bytes() for p in out.glob("*.plic")}
            first = next(iter(outputs.values()))
            assert len(first) == files and all(o == first for o in outputs.values()), \
                "the outputs differ between the ways of running"
            small, large = 20, args.touch
            ways = {"in-process (--jobs 1)": {}, "--jobs 2": {"jobs": 2}, "--ray (2 nodes)": {"ray": cluster.address}}
            times = {(name, n): float("inf") for name in ways for n in (small, large)}
            for _ in range(args.rounds):
                for name, options in ways.items():
                    for n in (small, large):
                        times[name, n] = min(times[name, n], touch(root, n, **options))
            overhead = {}
            for name in ways:
                per_file = (times[name, large] - times[name, small]) / (large - small)
                overhead[name] = (per_file, times[name, small] - small * per_file)
        finally:
            cluster.shutdown()

    print(f"plic encode, {files} files (tests/data x {args.copies}), default settings; {os.cpu_count()} cores; "
          f"fastest of {args.rounds} rounds; Ray cluster start {cluster_start:.1f} s (not counted)")
    print(f"{'mode':<18}{'seconds':>9}{'files/s':>9}{'ratio':>8}{'CPU s/file':>12}{'CPU ratio':>11}")
    for name, (wall, cpu) in seconds.items():
        print(f"{name:<18}{wall:>9.1f}{files / wall:>9.2f}{seconds['--jobs 1'][0] / wall:>8.2f}"
              f"{cpu / files:>12.3f}{cpu / seconds['--jobs 1'][1]:>11.2f}")
    print("outputs: the same bytes in every mode")
    print(f"\nper file a file that takes no time costs ({small} and {large} files; the start is the rest)")
    print(f"{'mode':<24}{'ms per file':>12}{'start s':>9}")
    for name, (per_file, fixed) in overhead.items():
        print(f"{name:<24}{per_file * 1000:>12.2f}{fixed:>9.2f}")


if __name__ == "__main__":
    main()
