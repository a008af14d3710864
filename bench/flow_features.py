"""What a network's evaluated features encode, on a set of generated/motion_set.py's family.

    python bench/flow_features.py --set=SETDIR --features=EVALDIR/features/flow_train_center.npz [...]

SETDIR is where bench/fidelity.py generated and prepared the set (SETDIR/raw/motion_set.json names
every video's nuisances, SETDIR/data its records); each --features file is the feature cache an
evaluation wrote (cvtcl_jax/eval/store.py: every dense clip's pooled backbone feature). For each,
on the per-video features that retrieval compares (each video's mean of normalised clip features,
normalised, then centred):
  effective rank   exp of the entropy of the normalised singular values (1: one direction, F: all
                   equal), and the share of the variance in the first direction;
  explained        the share of the variance that a least-squares fit on each factor explains:
                   the class, the camera's signature (dx, dy and their squares and product: a clip
                   may start on either frame of the alternation), the object's shape, its size and
                   its start (x, y), and the flow's residual (the mean |flow| after each frame's
                   median is removed, which TV-L1's errors under a shaking camera raise); for the
                   whole feature and for each of the three leading directions.
A factor with k columns explains about k/V of pure noise over V videos: the table prints that floor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEADING = 3  # leading directions reported one by one


def effective_rank(x: np.ndarray) -> tuple[float, float]:
    """(V, F) rows -> (exp of the entropy of the centred rows' normalised singular values, the first
    singular direction's share of the variance)."""
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum())), float(s[0] ** 2 / (s**2).sum())


def explained(y: np.ndarray, factor: np.ndarray) -> float:
    """The share of the variance of centred y (V, F) that a least-squares fit on factor (V, k) with
    an intercept explains (R^2 summed over y's columns)."""
    y = y - y.mean(axis=0)
    design = np.column_stack([np.ones(len(y)), factor])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(1 - ((y - design @ coef) ** 2).sum() / (y**2).sum())


def one_hot(values) -> np.ndarray:
    """(V,) categories -> (V, n - 1) indicator columns (the first category is the intercept's)."""
    names = sorted(set(values))
    return np.array([[v == n for n in names[1:]] for v in values], np.float64).reshape(len(values), -1)


def factors(about: dict, video_ids, labels, residual) -> dict[str, np.ndarray]:
    """{factor: (V, k) columns} of the videos named video_ids (motion_set.json's 'videos');
    residual: (V,) each video's mean |flow| after its frames' medians are removed."""
    videos = [about["videos"][v] for v in video_ids]
    sx, sy = np.array([v["signature"] for v in videos]).T
    return {
        "class": one_hot(list(labels)),
        "signature": np.stack([sx, sy, sx**2, sy**2, sx * sy], axis=1),
        "shape": one_hot([v["shape"] for v in videos]),
        "size": np.array([[v["half_size"]] for v in videos]),
        "start": np.array([v["start"] for v in videos]),
        "residual": np.asarray(residual, np.float64)[:, None],
    }


def analyse(features: np.ndarray, facts: dict[str, np.ndarray]) -> dict:
    """(V, F) per-video unit features -> {'effective_rank', 'first_share', 'explained': {factor:
    share}, 'leading': [{factor: share} per leading direction]}."""
    x = features - features.mean(axis=0)
    rank, first = effective_rank(features)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    directions = x @ vt[:LEADING].T
    return {
        "effective_rank": rank,
        "first_share": first,
        "explained": {name: explained(x, f) for name, f in facts.items()},
        "leading": [
            {name: explained(directions[:, [i]], f) for name, f in facts.items()} for i in range(LEADING)
        ],
        "noise_floor": {name: f.shape[1] / len(x) for name, f in facts.items()},
    }


def stored_videos(data_dir: str, name: str, subset: str) -> dict[int, tuple[str, float]]:
    """{video_index: (video id, the flow's residual)} of a prepared split's records."""
    from bench.flow_statistics import decode_flow
    from cvtcl_jax.data import dataset_info, records

    info = dataset_info.load_dataset_info(data_dir, name)
    out = {}
    for e in records.read_examples(info.subset(subset).shards, info.features):
        flow = decode_flow(e["flow"])
        residual = np.abs(flow - np.median(flow, axis=(1, 2), keepdims=True)).mean()
        out[int(e["video_index"])] = (e["video_id"], float(residual))
    return out


def analyse_file(set_dir: Path, path: Path) -> dict:
    """analyse() of one feature cache file of a set prepared in set_dir (bench/fidelity.py's W/set)."""
    from cvtcl_jax.eval import retrieval

    with np.load(path) as f:
        key = json.loads(str(f["key"]))
        rows = {k: f[k] for k in ("features", "video_index", "label")}
    keep = rows["video_index"] >= 0  # padding rows carry index -1
    videos, labels, feats = retrieval.video_features(
        rows["features"][keep], rows["video_index"][keep], rows["label"][keep]
    )
    stored = [stored_videos(key["data"], key["dataset"], key["subset"])[int(v)] for v in videos]
    about = json.loads((set_dir / "raw" / "motion_set.json").read_text())
    return analyse(feats, factors(about, [n for n, _ in stored], labels, [r for _, r in stored]))


def format_analysis(label: str, a: dict) -> str:
    """Two lines: effective rank and first share; the explained shares (whole, then leading)."""
    names = list(a["explained"])
    cells = "  ".join(f"{n} {a['explained'][n]:.2f}" for n in names)
    lead = " | ".join(" ".join(f"{d[n]:.2f}" for n in names) for d in a["leading"])
    floor = " ".join(f"{a['noise_floor'][n]:.2f}" for n in names)
    return (
        f"{label}: effective rank {a['effective_rank']:.1f}, first direction {100 * a['first_share']:.0f}%\n"
        f"  explained: {cells}\n  leading directions ({' '.join(names)}): {lead}\n  noise floor: {floor}"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python bench/flow_features.py", description=__doc__)
    p.add_argument("--set", required=True, help="the set's directory (raw/ and data/)")
    p.add_argument("--features", nargs="+", required=True, help="feature cache files (.npz)")
    p.add_argument("--json", help="also write the analyses here")
    a = p.parse_args(argv)
    out = {}
    for path in a.features:
        out[path] = analyse_file(Path(a.set), Path(path))
        print(format_analysis(path, out[path]))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
