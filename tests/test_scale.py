"""Many files at once (plic/runner.py, docs/scale.md): ``--jobs N`` worker processes and a Ray
cluster of two nodes simulated on this machine (``ray.cluster_utils.Cluster``) give the bytes
of one process; the manifest, the rerun that skips what is done, a killed worker, Ctrl-C.

The Ray tests skip, with the reason, where the ``ray`` extra is not installed; the cluster is
shut down in a ``finally`` and the test fails if one of its processes is left behind.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from plic import runner
from plic.codec import fileformat, pack
from plic.errors import MissingDependencyError
from tests.support.images import CORE_IMAGES, DATA, REPO, load_shared
from tests.support.tiny_models import COLOR_CANNY, INPAINT, PIPELINE, tiny_models_dir  # noqa: F401

PROMPT = "a test prompt"
IMAGES = [DATA / name for name in CORE_IMAGES]


def plic(*args, check=True, **kwargs):
    result = subprocess.run([sys.executable, "-m", "plic", *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=600, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def manifest(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def plic_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.plic"))}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The .plic bytes of the test images encoded by `--jobs 1` (in the command's process)."""
    out = tmp_path_factory.mktemp("one") / "out"
    plic("encode", *IMAGES, "-o", out, "--prompt", PROMPT, "--jobs", 1)
    return plic_bytes(out)


@pytest.fixture
def many_images(tmp_path):
    """The test images twice over under other names (a run long enough to interrupt), and the
    name of the original each copy's .plic must equal."""
    folder = tmp_path / "many"
    folder.mkdir()
    originals = {}
    for copy in range(2):
        for image in IMAGES:
            name = f"{copy}-{image.name}"
            shutil.copy(image, folder / name)
            originals[f"{copy}-{image.stem}.plic"] = f"{image.stem}.plic"
    return folder, originals


def test_jobs_2_writes_the_bytes_of_one_process_and_a_manifest_line_per_file(one_process, tmp_path):
    out = tmp_path / "out"
    result = plic("encode", *IMAGES, "-o", out, "--prompt", PROMPT, "--jobs", 2)
    assert plic_bytes(out) == one_process and len(one_process) == len(IMAGES)
    rows = manifest(out / "manifest.jsonl")
    assert sorted(r["input"] for r in rows) == sorted(map(str, IMAGES))
    for row in rows:
        assert list(row) == list(runner.MANIFEST_KEYS)
        target = out / f"{os.path.splitext(os.path.basename(row['input']))[0]}.plic"
        assert row["status"] == "done" and row["output"] == str(target) and row["error"] == ""
        assert row["bytes"] == target.stat().st_size and row["bpp"] > 0 and row["seconds"] > 0
    assert len({row["worker"] for row in rows}) == 2  # both processes worked
    assert f"plic: {len(IMAGES)}/{len(IMAGES)} done, 0 failed" in result.stderr
    for row in rows:  # what each worker printed comes back to the command's output
        assert f"{row['output']}: {row['bytes']} bytes" in result.stdout


def test_a_rerun_skips_what_checks_out_and_redoes_the_rest(one_process, tmp_path):
    out = tmp_path / "out"
    plic("encode", *IMAGES, "-o", out, "--prompt", PROMPT, "--jobs", 2)
    (out / "coffee.plic").unlink()
    damaged = out / "page.plic"
    damaged.write_bytes(damaged.read_bytes()[:-1])
    leftover = out / ".coffee.plic.0123abcd.tmp"  # what a killed worker leaves
    leftover.write_bytes(b"partial")
    result = plic("encode", *IMAGES, "-o", out, "--prompt", PROMPT, "--jobs", 2, check=False)
    assert result.returncode == 1
    assert not leftover.exists()
    rows = {r["input"]: r for r in manifest(out / "manifest.jsonl")[len(IMAGES):]}
    assert rows[str(DATA / "coffee.png")]["status"] == "done"
    assert rows[str(DATA / "page.png")]["status"] == "failed"
    assert f"{damaged}: exists but does not check out" in rows[str(DATA / "page.png")]["error"]
    assert "pass --overwrite to replace it" in result.stderr
    assert {r["status"] for name, r in rows.items() if "coffee" not in name and "page" not in name} == {"skipped"}
    plic("encode", *IMAGES, "-o", out, "--prompt", PROMPT, "--jobs", 2, "--overwrite")
    assert plic_bytes(out) == one_process


def test_a_bad_file_is_one_failed_row_and_the_rest_are_done(one_process, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for image in IMAGES:
        shutil.copy(image, folder)
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = plic("encode", folder, "-o", out, "--prompt", PROMPT, "--jobs", 2, check=False)
    assert result.returncode == 1
    rows = {os.path.basename(r["input"]): r for r in manifest(out / "manifest.jsonl")}
    assert rows["broken.png"]["status"] == "failed" and str(folder / "broken.png") in rows["broken.png"]["error"]
    assert rows["broken.png"]["error"] in result.stderr
    assert plic_bytes(out) == one_process


def _wait_for_rows(path, count: int, process, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not (path.is_file() and len(path.read_text().splitlines()) >= count):
        assert process.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, "no manifest line came"
        time.sleep(0.05)


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "plic", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def test_a_worker_killed_mid_run_has_its_files_run_again(one_process, many_images, tmp_path):
    folder, originals = many_images
    out = tmp_path / "out"
    process = _start("encode", folder, "-o", out, "--prompt", PROMPT, "--jobs", 2)
    _wait_for_rows(out / "manifest.jsonl", 1, process)
    workers = [p for p in psutil.Process(process.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    assert workers, "no worker process to kill"
    workers[0].kill()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "plic: a worker process died" in stderr
    rows = manifest(out / "manifest.jsonl")
    assert sorted(r["input"] for r in rows) == sorted(str(p) for p in folder.iterdir())
    assert {r["status"] for r in rows} == {"done"}
    assert {name: data for name, data in plic_bytes(out).items()} == {
        name: one_process[original] for name, original in originals.items()}
    assert not list(out.glob(".*.tmp"))


def test_ctrl_c_leaves_no_partial_file_and_the_same_command_finishes_the_run(one_process, many_images, tmp_path):
    folder, originals = many_images
    out = tmp_path / "out"
    process = _start("encode", folder, "-o", out, "--prompt", PROMPT, "--jobs", 2)
    _wait_for_rows(out / "manifest.jsonl", 2, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "plic: interrupted" in stderr
    assert not list(out.glob(".*.tmp"))
    finished = plic_bytes(out)
    assert 2 <= len(finished) < len(originals)
    assert all(data == one_process[originals[name]] for name, data in finished.items())  # whole files only

    plic("encode", folder, "-o", out, "--prompt", PROMPT, "--jobs", 2)
    rows = manifest(out / "manifest.jsonl")
    last = {r["input"]: r["status"] for r in rows}  # the last line of each input is its state
    assert sorted(last.values()).count("skipped") == len(finished)
    assert set(last.values()) == {"done", "skipped"} and len(last) == len(originals)
    assert plic_bytes(out) == {name: one_process[original] for name, original in originals.items()}


def test_eval_with_two_workers_gives_the_report_of_one_process_and_a_rerun_reuses_scores(one_process, tmp_path):
    originals, reconstructions, plics = (tmp_path / name for name in ("originals", "reconstructions", "plic"))
    for folder in (originals, reconstructions, plics):
        folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(DATA / name, originals)
        Image.open(DATA / name).convert("RGB").save(reconstructions / f"{name[:-4]}.jpg", quality=8)
        (plics / f"{name[:-4]}.plic").write_bytes(one_process[f"{name[:-4]}.plic"])
    command = ("eval", originals, "-r", reconstructions, "--plic", plics, "--metrics", "psnr,ssim")
    plic(*command, "-o", tmp_path / "one")
    two = tmp_path / "two"
    plic(*command, "-o", two, "--jobs", 2)
    assert (two / "results.csv").read_text() == (tmp_path / "one" / "results.csv").read_text()
    # an interrupted run has no report yet: the rerun evaluates only the images without scores
    for name in ("results.csv", "results.json", "report.html"):
        (two / name).unlink()
    shutil.rmtree(two / "plots")
    (two / "images" / "coffee.json").unlink()
    plic(*command, "-o", two, "--jobs", 2)
    rows = manifest(two / "manifest.jsonl")[2:]
    assert {os.path.basename(r["input"]): r["status"] for r in rows} == {"chelsea.png": "skipped", "coffee.png": "done"}
    assert (two / "results.csv").read_text() == (tmp_path / "one" / "results.csv").read_text()


class DiesOn(runner.Work):
    """Writes each input's name to its output; the worker that takes ``name`` dies at once (as
    a segfault or the out-of-memory killer would end it)."""

    def __init__(self, name: str):
        self.name = name

    def run_one(self, opened, task):
        if task.source.name == self.name:
            os._exit(1)
        task.target.write_text(task.source.name)
        return 1, None, None


def test_a_file_whose_worker_dies_twice_fails_and_the_others_are_done(tmp_path):
    tasks = [runner.Task(tmp_path / name, tmp_path / "out" / name) for name in "abcdef"]
    (tmp_path / "out").mkdir()
    stream = io.StringIO()
    rows = runner.run(DiesOn("c"), tasks, runner.Options(manifest=tmp_path / "m.jsonl", jobs=2), stream)
    assert [r.status for r in rows] == ["done", "done", "failed", "done", "done", "done"]
    assert rows[2].error == f"{tasks[2].source}: {runner.DIED}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == list("abdef")
    assert "a worker process died" in stream.getvalue()
    assert [r["status"] for r in sorted(manifest(tmp_path / "m.jsonl"), key=lambda r: r["input"])] == \
        [r.status for r in rows]


def _plic_folder(folder) -> None:
    """Three small .plic files of two sizes, each with its own seed."""
    for index, (name, side) in enumerate((("astronaut.png", 48), ("coffee.png", 64), ("chelsea.png", 48))):
        work = load_shared(name, max_side=side)
        fileformat.save(pack.encode_image(work, prompt=f"image {index}", settings=pack.EncodeSettings(max_side=side),
                                           decode_settings={**pack.DEFAULT_DECODE_SETTINGS, "steps": 1, "seed": 3 + index}),
                        folder / f"{index}.plic")


def _decode_args(models_dir):
    return ("--models-dir", models_dir, "--model", PIPELINE, "--inpaint-controlnet", INPAINT,
            "--color-canny-controlnet", COLOR_CANNY, "--batch-size", 2)


def _pixels(folder) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def decoded_one_process(tiny_models_dir, tmp_path_factory):  # noqa: F811
    """(folder of .plic files, the PNGs one process decodes from them)."""
    root = tmp_path_factory.mktemp("decode")
    _plic_folder(root / "in")
    plic("decode", root / "in", "-o", root / "out", *_decode_args(tiny_models_dir), "--jobs", 1)
    return root / "in", _pixels(root / "out")


def test_decode_with_two_cpu_workers_gives_the_images_of_one_process(decoded_one_process, tiny_models_dir,  # noqa: F811
                                                                     tmp_path):
    folder, expected = decoded_one_process
    shutil.copytree(folder, tmp_path / "in")
    bad = tmp_path / "in" / "bad.plic"
    bad.write_bytes((folder / "0.plic").read_bytes()[:-10])
    result = plic("decode", tmp_path / "in", "-o", tmp_path / "out", *_decode_args(tiny_models_dir), "--jobs", 2,
                  check=False)
    assert result.returncode == 1
    decoded = _pixels(tmp_path / "out")
    assert list(decoded) == list(expected) and len(expected) == 3
    for name in expected:
        np.testing.assert_array_equal(decoded[name], expected[name], err_msg=name)
    rows = {os.path.basename(r["input"]): r for r in manifest(tmp_path / "out" / "manifest.jsonl")}
    assert rows["bad.plic"]["status"] == "failed" and f"{bad}: not a valid .plic file" in rows["bad.plic"]["error"]
    assert len({r["worker"] for name, r in rows.items() if name != "bad.plic"}) == 2


def test_two_inputs_for_one_output_are_one_failed_row(tmp_path):
    for suffix in ("png", "jpg"):
        Image.open(DATA / "coffee.png").convert("RGB").save(tmp_path / f"same.{suffix}")
    out = tmp_path / "out"
    result = plic("encode", tmp_path / "same.jpg", tmp_path / "same.png", "-o", out, "--prompt", PROMPT,
                  "--jobs", 1, check=False)
    assert result.returncode == 1
    rows = manifest(out / "manifest.jsonl")
    assert [r["status"] for r in rows] == ["failed", "done"]  # settled before the work, then done
    assert rows[0]["input"] == str(tmp_path / "same.png") and "would be written to" in rows[0]["error"]


def test_a_restartable_encode_imports_neither_ray_nor_torch(tmp_path):
    code = ("import sys; from plic.cli.main import main; "
            f"rc = main(['encode', {str(DATA / 'rocket.jpg')!r}, '-o', {str(tmp_path)!r}, '--jobs', '1']); "
            "heavy = [m for m in ('ray', 'torch') if m in sys.modules]; assert rc == 0 and not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_without_ray_the_ray_option_says_what_to_install(tmp_path, monkeypatch):
    """Where ray cannot be imported (a None in sys.modules makes `import ray` fail), --ray is
    one line naming the extra, and nothing else needs ray."""
    code = ("import sys; sys.modules['ray'] = None; from plic.cli.main import main; "
            f"sys.exit(main(['encode', {str(IMAGES[0])!r}, '-o', {str(tmp_path)!r}, '--ray', 'auto']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    failure = [line for line in result.stderr.splitlines() if "--ray" in line]
    assert len(failure) == 1 and failure[0].startswith("plic: --ray needs the Python package 'ray'")
    assert 'pip install "comfyui-plic[ray]"' in failure[0]
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match="comfyui-plic"):
        runner.connect("auto")


# -- Ray -----------------------------------------------------------------------------------------

def _ray_processes() -> set[int]:
    """Ray's own processes on this machine (of any cluster: other users' are subtracted)."""
    found = set()
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        command = " ".join(process.info["cmdline"] or [])
        if process.info["status"] != psutil.STATUS_ZOMBIE and ("raylet" in command or "gcs_server" in command):
            found.add(process.info["pid"])
    return found


@pytest.fixture(scope="module")
def two_nodes():
    """The address of a two-node Ray cluster on this machine (one CPU and 150 MB of object store
    each); shut down whatever happens, and no process of it may remain."""
    cluster_utils = pytest.importorskip("ray.cluster_utils",
                                        reason='the Ray tests need the ray extra: pip install ".[ray]"')
    before = _ray_processes()
    cluster = None
    try:
        node = {"num_cpus": 1, "object_store_memory": 150 * 2**20}
        cluster = cluster_utils.Cluster(initialize_head=True,
                                        head_node_args={"include_dashboard": False, **node})
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        if cluster is not None:
            cluster.shutdown()
        deadline = time.monotonic() + 30
        while _ray_processes() - before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _ray_processes() - before, "a Ray process of the test cluster is still running"


def test_ray_encode_on_two_nodes_writes_the_bytes_of_one_process(two_nodes, one_process, tmp_path):
    out = tmp_path / "out"
    result = plic("encode", *IMAGES, "-o", out, "--prompt", PROMPT, "--ray", two_nodes)
    assert plic_bytes(out) == one_process
    rows = manifest(out / "manifest.jsonl")
    assert {r["status"] for r in rows} == {"done"} and len(rows) == len(IMAGES)
    assert all(" node " in r["worker"] for r in rows)
    assert f"plic: {len(IMAGES)}/{len(IMAGES)} done, 0 failed" in result.stderr


def test_ray_decode_actors_on_two_nodes_give_the_images_of_one_process(two_nodes, decoded_one_process,
                                                                       tiny_models_dir, tmp_path):  # noqa: F811
    folder, expected = decoded_one_process
    out = tmp_path / "out"
    plic("decode", folder, "-o", out, *_decode_args(tiny_models_dir), "--ray", two_nodes)
    decoded = _pixels(out)
    assert list(decoded) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(decoded[name], expected[name], err_msg=name)
    rows = manifest(out / "manifest.jsonl")
    assert {r["status"] for r in rows} == {"done"}
    nodes = {r["worker"].split(" node ")[1].split()[0] for r in rows}
    assert len(nodes) == 2  # an actor on each node (one CPU each)


def test_a_ray_worker_killed_mid_run_has_its_file_run_again(two_nodes, one_process, many_images, tmp_path):
    folder, originals = many_images
    out = tmp_path / "out"
    process = _start("encode", folder, "-o", out, "--prompt", PROMPT, "--ray", two_nodes)
    _wait_for_rows(out / "manifest.jsonl", 1, process)
    busy = [p for p in psutil.Process().children(recursive=True)  # the cluster's are this process's
            if (p.cmdline() or [""])[0] == "ray::_run_chunk"]
    assert busy, "no Ray task is running"
    busy[0].kill()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    rows = manifest(out / "manifest.jsonl")
    assert {r["status"] for r in rows} == {"done"} and len(rows) == len(originals)
    assert plic_bytes(out) == {name: one_process[original] for name, original in originals.items()}
