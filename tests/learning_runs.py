"""The learned-vs-random checks' training runs, each in a process of its own on one emulated CPU
device: a step of the tiny networks runs 3.5 times faster there than on the suite's eight
(docs/log.md), and these checks test what is learned, not how it is sharded (test_steps and
test_evaluation's device-count tests do that). This module must not import tests/conftest.py,
which sets eight devices.

    python -m tests.learning_runs rgb_patterns DATA WORKDIR [SEED]

prints the scores as its last line, JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ONE_DEVICE = {"JAX_NUM_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu"}


def _override(cfg, changes: dict):
    """cfg with changes given as {"section__name": value} applied."""
    for key, value in changes.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


def eval_config(data_dir, mode, view="two_stream", rgb="random", flow="random", **changes):
    """The tiny config's evaluation `mode` of `view` from sources `rgb`/`flow` (a workdir, an
    export or 'random'), short classifier schedules; changes as {"section__name": value}."""
    from tests import tiny_config

    cfg = tiny_config.run_config(data_dir, mode)
    cfg.eval.update(view=view, rgb_source=rgb and str(rgb), flow_source=flow and str(flow))
    cfg.linear.update(epochs=4, decay_epochs=(3,))
    cfg.finetune.update(epochs=2, decay_epochs=(1,))
    return _override(cfg, changes)


def learned_and_random_scores(data_dir, view, epochs, workdir, seed=0, **changes) -> dict:
    """Initializes `view` with the demo's recipe (InfoNCE + LTCL, batch 16, queue 48) for `epochs`
    with training seed `seed` and returns {"random"|"learned": {"retrieval"|"linear_probe":
    metrics}} on the test videos. changes: config overrides of the training run."""
    from cvtcl_jax import modes
    from tests import tiny_config

    workdir = Path(workdir)
    cfg = tiny_config.run_config(data_dir, "init", view=view, retrieval_every_epochs=0)
    cfg.update(global_batch=16, queue_size=48, seed=seed)
    cfg.train.update(checkpoint_every_steps=150, log_every_steps=50)
    cfg.schedule.init_epochs = epochs
    modes.run(_override(cfg, changes), workdir / f"init_{view}")
    scores: dict = {}
    for name, source in (("random", "random"), ("learned", workdir / f"init_{view}")):
        for protocol in ("retrieval", "linear_probe"):
            sources = {"rgb": "random", "flow": "random", view: source}
            c = eval_config(data_dir, protocol, view=view, **sources, linear__cached=True)
            c.linear.update(epochs=100, decay_epochs=(60, 80))
            c.global_batch = 16
            metrics = modes.run(c, workdir / f"eval_{name}")[view]["metrics"]
            scores.setdefault(name, {})[protocol] = metrics
    return scores


def rgb_patterns(data_dir, workdir, seed=0) -> dict:
    """The RGB check's run: the demo's RGB recipe with its milder augmentation, for its 150
    epochs (450 steps), on synthetic's 'pattern' set."""
    from configs import demo

    aug = demo.get_config().data.aug
    return learned_and_random_scores(data_dir, "rgb", 150, workdir, seed=seed, data__aug=aug)


RUNS = {"rgb_patterns": rgb_patterns}


def on_one_device(run: str, data_dir, workdir, seed=0) -> dict:
    """RUNS[run] in a child process on one emulated device; its scores."""
    cmd = [sys.executable, "-m", "tests.learning_runs", run, str(data_dir), str(workdir), str(seed)]
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **ONE_DEVICE}, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv) -> None:
    run, data_dir, workdir, *seed = argv
    import jax

    assert jax.device_count() == 1, f"{jax.device_count()} devices: run with {ONE_DEVICE}"
    scores = RUNS[run](Path(data_dir), Path(workdir), seed=int(seed[0]) if seed else 0)
    print(json.dumps(scores))


if __name__ == "__main__":
    main(sys.argv[1:])
