"""A report of a run: WORKDIR/report.html, one self-contained file (plots and pictures embedded as
PNG) that opens offline in a browser, made from what the run already writes, so it can be made
again for any workdir:

    python -m cvtcl_jax.report WORKDIR

Sections, each where the workdir holds what it shows:
  results   the evaluation table of a schedule or demo (schedule.json), the result files of an
            evaluation (<protocol>_<dataset>_<view>.json), the fidelity benchmark's or the
            ablations' mean +- spread over seeds against their baselines (fidelity.json,
            family.json, table1.json, table3.json), as tables and bars
  training  per stage (a folder with checkpoints): its loss terms and learning rate against the
            batch, throughput and time, from its TensorBoard events; the in-training retrieval R@1
  pictures  the retrieval neighbour grids of the evaluations (the paper's Fig. 4)
  run       the command, config, versions, machine and devices of each launch (run.json)

The same workdir gives the same file: nothing in it depends on when the report was made.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

REPORT = "report.html"
RUN_RECORD = "run.json"
LOSSES = ("loss", "loss_infonce", "loss_rf", "loss_local", "loss_lt")


# ---------------------------------------------------------------------- reading the workdir


def _events(folder: Path) -> tuple[dict[str, list], dict[str, bytes]]:
    """({scalar tag: [(step, wall time, value)]}, {image tag: PNG bytes, the latest}) of a folder's
    TensorBoard event files (not its subfolders)."""
    import tensorflow as tf

    scalars: dict[str, list] = {}
    images: dict[str, bytes] = {}
    for path in sorted(folder.glob("events.out.tfevents*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "images" and value.HasField("tensor"):
                    images[value.tag] = tf.make_ndarray(value.tensor)[2]  # [width, height, png]
                elif plugin == "scalars" or value.HasField("simple_value"):
                    tensor = value.HasField("tensor")
                    number = (
                        float(tf.make_ndarray(value.tensor).reshape(())) if tensor else value.simple_value
                    )
                    scalars.setdefault(value.tag, []).append((event.step, event.wall_time, number))
    return {k: sorted(v) for k, v in scalars.items()}, images


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stages(wd: Path) -> list[Path]:
    """Training stage folders at or below the workdir (a checkpoints/ folder and events), in the
    order they started (their first event file's name holds its creation time)."""
    found = {p.parent for p in wd.rglob("checkpoints")}
    return _by_start([p for p in found if any(p.glob("events.out.tfevents*"))])


def _by_start(folders) -> list[Path]:
    """Folders of event files in the order they were started (an event file's name holds its
    creation time)."""
    return sorted(folders, key=lambda p: (min(f.name for f in p.glob("events.out.tfevents*")), str(p)))


# ---------------------------------------------------------------------- figures


def _png(figure) -> str:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buf.getvalue()).decode()


def _img(png_b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_b64}">'


def _axes(ncols: int, width: float = 6.4, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return figure, list(axes[0])


def _plot(ax, title: str, series: dict[str, list], ylabel: str, log: bool = False) -> None:
    for name, points in series.items():
        steps, values = [p[0] for p in points], [p[-1] for p in points]
        ax.plot(steps, values, label=name, marker="." if len(points) < 30 else None)
    ax.set(title=title, xlabel="batch", ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)


def _curves(title: str, series: dict[str, list], ylabel: str) -> str:
    figure, (ax,) = _axes(1)
    _plot(ax, title, series, ylabel)
    figure.tight_layout()
    return _png(figure)


def _bars(title: str, rows: dict[str, dict], metric: str) -> str:
    """Mean +- std bars of `metric` per row (a fidelity summary's {row: {metric: {mean, std}}})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in rows.items() if metric in r]
    figure, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 1.2))
    means = [rows[n][metric]["mean"] for n in names]
    stds = [rows[n][metric]["std"] for n in names]
    ax.barh(names, means, xerr=stds, color="#4c72b0", capsize=3)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=f"{metric} (mean +- std over seeds)")
    ax.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _png(figure)


# ---------------------------------------------------------------------- sections


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.1f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _evaluation_table(table: dict) -> str:
    columns = sorted({k for stages in table.values() for row in stages.values() for k in row})
    rows = [
        [view, stage, *[row.get(c, "") for c in columns]]
        for view, stages in table.items()
        for stage, row in stages.items()
    ]
    return _table(["view", "stage", *columns], rows)


def _results(wd: Path) -> list[str]:
    parts = []
    for name in ("schedule.json", "demo_results.json"):
        data = _json(wd / name)
        table = (data or {}).get("evaluation") if name == "schedule.json" else data
        if table:
            parts.append(f"<h3>Evaluation ({name})</h3>" + _evaluation_table(table))
            break
    results = sorted(wd.glob("*_*_*.json"))
    records = [
        r for r in (_json(p) for p in results) if isinstance(r, dict) and "protocol" in r and "metrics" in r
    ]
    if records:
        rows = [
            [
                r["protocol"],
                r["view"],
                r["dataset"],
                *[f"{k} {v:.1f}" for k, v in sorted(r["metrics"].items()) if isinstance(v, float)][:4],
            ]
            for r in records
        ]
        width = max(len(r) for r in rows)
        parts.append(
            "<h3>Evaluation results</h3>"
            + _table(
                ["protocol", "view", "dataset"] + ["metric"] * (width - 3),
                [r + [""] * (width - len(r)) for r in rows],
            )
        )
    for name in ("fidelity.json", "family.json", "table1.json", "table3.json"):
        data = _json(wd / name)
        if not data or "summary" not in data:
            continue
        parts.append(f"<h3>{html.escape(name)}: mean +- std over seeds {data.get('seeds', '')}</h3>")
        for view, rows in data["summary"].items():
            lines = [
                [
                    view,
                    row,
                    *[
                        f"{m['mean']:.1f} +- {m['std']:.1f}"
                        for m in (metrics.get(k) for k in ("R@1", "R@5", "linear_top1"))
                        if m
                    ],
                ]
                for row, metrics in rows.items()
            ]
            parts.append(_table(["view", "row", "R@1", "R@5", "linear_top1"], lines))
            for metric in ("R@1", "linear_top1"):
                if any(metric in r for r in rows.values()):
                    parts.append(_img(_bars(f"{view}: {metric}", rows, metric), f"{view} {metric}"))
    return parts


def _training(wd: Path) -> list[str]:
    parts, retrieval = [], {}
    for stage in _stages(wd):
        scalars, _ = _events(stage)
        name = str(stage.relative_to(wd)) if stage != wd else stage.name
        losses = {t.split("/")[-1]: scalars[t] for t in (f"train/{k}" for k in LOSSES) if t in scalars}
        if not losses:
            continue
        parts.append(f"<h3>{html.escape(name)}</h3>")
        summary = _json(stage / "metrics.json") or {}
        rate = scalars.get("train/clips_per_sec", [])
        wall = scalars["train/loss"][-1][1] - scalars["train/loss"][0][1] if "train/loss" in scalars else 0.0
        facts = [f"{summary.get('batches', scalars['train/loss'][-1][0])} batches"]
        if rate:
            facts.append(f"{np.mean([r[-1] for r in rate]):.1f} clips/s")
        facts.append(f"{wall / 60:.1f} min between its first and last logged batch")
        parts.append(f"<p>{html.escape(', '.join(facts))}</p>")
        figure, (left, right) = _axes(2, width=4.8)
        _plot(left, f"{name}: loss terms", losses, "loss")
        _plot(right, f"{name}: learning rate", {"lr": scalars.get("train/lr", [])}, "lr", log=True)
        figure.tight_layout()
        parts.append(_img(_png(figure), f"{name}: loss terms and learning rate"))
        if "retrieval/R@1" in scalars:
            retrieval[name] = scalars["retrieval/R@1"]
    if retrieval:
        parts.insert(
            0, _img(_curves("in-training retrieval R@1 (held-out check)", retrieval, "R@1 (%)"), "retrieval")
        )
    return parts


def _pictures(wd: Path) -> list[str]:
    parts = []
    for folder in _by_start({p.parent for p in wd.rglob("events.out.tfevents*")}):
        _, images = _events(folder)
        for tag, png in sorted(images.items()):
            where = folder.relative_to(wd) if folder != wd else Path(".")
            parts.append(f"<h3>{html.escape(f'{where}: {tag}')}</h3>")
            parts.append(_img(base64.b64encode(png).decode(), tag))
    return parts


def _run_value(value) -> str:
    """A run record's value in words: {a: 1, b: 2} -> 'a 1, b 2'; earlier launches one per line."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_run_value(v) for v in value) or "none"
    return str(value)


def _runs(wd: Path) -> list[str]:
    parts = []
    for path in sorted(wd.rglob(RUN_RECORD)):
        record = _json(path) or {}
        config = record.pop("config", None)
        rows = [[k, _run_value(v)] for k, v in record.items()]
        parts.append(
            f"<h3>{html.escape(str(path.parent.relative_to(wd)) if path.parent != wd else 'this run')}</h3>"
        )
        parts.append(_table(["", ""], rows))
        if config is not None:
            shown = html.escape(json.dumps(config, indent=1))
            parts.append(f"<details><summary>config</summary><pre>{shown}</pre></details>")
    return parts


STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f0f0f0}td:first-child,td:nth-child(2){text-align:left}
img{max-width:100%;display:block;margin:.5em 0}
pre{font-size:.8em;background:#f7f7f7;padding:.5em;overflow:auto}"""


def make_report(workdir: str | Path) -> Path:
    """Writes WORKDIR/report.html from what the workdir holds; returns its path."""
    wd = Path(workdir)
    sections = [
        ("Results", _results(wd)),
        ("Training", _training(wd)),
        ("Pictures", _pictures(wd)),
        ("Run", _runs(wd)),
    ]
    body = "".join(f"<h2>{title}</h2>{''.join(parts)}" for title, parts in sections if parts)
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>cvtcl-jax: {html.escape(wd.name)}</title><style>{STYLE}</style></head>"
        f"<body><h1>cvtcl-jax run: {html.escape(wd.name)}</h1>"
        f"{body or '<p>nothing to report yet</p>'}</body></html>\n"
    )
    path = wd / REPORT
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m cvtcl_jax.report WORKDIR", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the reader's own notices, not the user's
    print(make_report(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
