"""Writing an evaluation: the per-image table (CSV, JSON), mean and median per method like the
paper's tables, rate-quality plots (bpp against each metric, matplotlib PNGs) and one
self-contained HTML page (thumbnails and plots embedded) showing them all.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from plic.atomic import write_atomic
from plic.deps import require
from plic.eval.evaluation import Result
from plic.eval.metrics import HIGHER_IS_BETTER, METRIC_NAMES
from plic.image import resize_to_height

THUMB_HEIGHT = 192
#: Plot colour of each method (matplotlib's tab10), so every plot and the page agree.
COLOURS = {"plic": "#d62728", "jpeg": "#1f77b4", "webp": "#2ca02c", "avif": "#9467bd", "original": "#7f7f7f"}
FILES = ("results.csv", "results.json", "report.html")


def columns(results: list[Result]) -> list[str]:
    present = {name for r in results for name in r.scores}
    return (["image", "method", "bytes", "bpp", "quality"]
            + [m for m in METRIC_NAMES if m in present] + ["note"])


def summary(results: list[Result]) -> list[dict]:
    """Mean and median of bytes, bpp and each metric per method, over the images where the
    method produced an output."""
    rows = []
    for method in dict.fromkeys(r.method for r in results):
        mine = [r for r in results if r.method == method and (r.scores or r.bytes)]
        for statistic, function in (("mean", np.mean), ("median", np.median)):
            row = {"method": method, "statistic": statistic, "images": len(mine)}
            for key in ["bytes", "bpp", *METRIC_NAMES]:
                values = [value for r in mine if (value := r.row().get(key)) is not None]
                row[key] = float(function(values)) if values else None
            rows.append(row)
    return rows


def _json_number(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_tables(results: list[Result], out: Path, overwrite: bool) -> None:
    keys = columns(results)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in results)
    write_atomic(out / "results.csv", text.getvalue().encode(), overwrite=overwrite)
    document = {"rows": [{k: _json_number(v) for k, v in r.row().items()} for r in results],
                "summary": [{k: _json_number(v) for k, v in row.items()} for row in summary(results)],
                "note": "psnr of identical images is infinite, written as null"}
    write_atomic(out / "results.json", json.dumps(document, indent=1).encode(), overwrite=overwrite)


def plots(results: list[Result]) -> dict[str, bytes]:
    """A PNG per metric: bpp (x) against the metric (y), one colour per method."""
    require("matplotlib", package="matplotlib", purpose="The evaluation report's plots")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    pngs = {}
    for metric in METRIC_NAMES:
        points = [r for r in results if r.bpp is not None and metric in r.scores
                  and math.isfinite(r.scores[metric])]
        if not points:
            continue
        figure = Figure(figsize=(4.8, 3.4), dpi=100)
        axes = figure.add_subplot()
        for method in dict.fromkeys(r.method for r in points):
            mine = [r for r in points if r.method == method]
            axes.scatter([r.bpp for r in mine], [r.scores[metric] for r in mine], s=36,
                         color=COLOURS.get(method), label=method)
        axes.set_xlabel("bits per pixel")
        axes.set_ylabel(f"{metric} ({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better)")
        axes.set_title(f"{metric} against rate")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(out, format="png")
        pngs[metric] = out.getvalue()
    return pngs


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _thumb(picture: np.ndarray) -> str:
    image = Image.fromarray(resize_to_height(np.ascontiguousarray(picture), THUMB_HEIGHT))
    out = io.BytesIO()
    image.save(out, "PNG")
    return _png_uri(out.getvalue())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "inf"
    return html.escape(str(value))


def _table(rows: list[dict], keys: list[str], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(k))}</td>" for k in keys) + "</tr>"
                   for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body { font-family: sans-serif; margin: 16px; background: #fff; color: #111; }
table { border-collapse: collapse; margin: 8px 0 24px; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 3px 6px; text-align: right; }
th { background: #eee; }
.strip { display: flex; gap: 8px; margin-bottom: 16px; flex-wrap: wrap; }
.strip figure { margin: 0; }
.strip figcaption { font-size: 12px; max-width: 260px; }
.missing { width: 192px; height: 192px; background: #606060; color: #fff; display: flex;
           align-items: center; justify-content: center; text-align: center; font-size: 12px; }
.plots img { margin: 4px; border: 1px solid #ccc; }
"""


def html_page(results: list[Result], pngs: dict[str, bytes]) -> str:
    keys = columns(results)
    summary_keys = ["method", "statistic", "images", "bytes", "bpp"] + [k for k in keys if k in METRIC_NAMES]
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>PLIC evaluation</title>",
             f"<style>{STYLE}</style></head><body><h1>PLIC evaluation</h1>",
             "<h2>Mean and median per method</h2>", _table(summary(results), summary_keys, "summary"),
             "<h2>Rate against quality</h2><div class='plots'>"]
    parts += [f"<img class='plot' alt='{m} against bpp' src='{_png_uri(data)}'>" for m, data in pngs.items()]
    parts.append("</div><h2>Images</h2>")
    for image in dict.fromkeys(r.image for r in results):
        parts.append(f"<h3>{html.escape(image)}</h3><div class='strip'>")
        for r in (r for r in results if r.image == image):
            caption = html.escape(r.method) + (f", {r.bytes} bytes" if r.bytes else "") + \
                (f", q{r.quality}" if r.quality is not None else "")
            if r.picture is not None:
                body = f"<img class='thumb' alt='{html.escape(r.method)}' src='{_thumb(r.picture)}'>"
            else:
                body = f"<div class='missing'>{html.escape(r.note)}</div>"
            parts.append(f"<figure>{body}<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
    parts += ["<h2>Per image</h2>", _table([r.row() for r in results], keys, "rows"), "</body></html>"]
    return "".join(parts)


def write_summary(results: list[Result], out: Path, overwrite: bool = False) -> list[Path]:
    """results.csv, results.json, plots/<metric>.png and report.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_tables(results, out, overwrite)
    pngs = plots(results)
    (out / "plots").mkdir(exist_ok=True)
    for metric, data in pngs.items():
        write_atomic(out / "plots" / f"{metric}.png", data, overwrite=overwrite)
    write_atomic(out / "report.html", html_page(results, pngs).encode(), overwrite=overwrite)
    return [out / name for name in FILES] + [out / "plots" / f"{m}.png" for m in pngs]
