"""bench/train_step.py: the largest-batch search (--fit_gib) on a known memory curve, and the
timing of the device augmentation alone and of one compiled step after each on_device setting."""

import argparse
import json

import numpy as np
import pytest

from bench import train_step


def _args(**kw):
    return argparse.Namespace(
        **{
            "batch": [128, 256],
            "bn_group": 32,
            "queue": 2048,
            "fit_gib": 30.0,
            "dtype": "bfloat16",
            "remat": False,
            "fit_no_check": False,
            **kw,
        }
    )


@pytest.fixture
def compiles(monkeypatch):
    """Replaces the step's compile by 0.5 GiB + 0.1 GiB per clip (+ `extra` GiB with autotuning,
    as other convolution algorithms' scratch space); records every (batch, autotune) compiled."""
    calls, extra = [], {"gib": 0.0}

    def memory(args, stage, batch, queue, autotune=True):
        assert queue % batch == 0 and queue >= args.queue
        calls.append((batch, autotune))
        return 0.5 + 0.1 * batch + (extra["gib"] if autotune else 0.0)

    monkeypatch.setattr(train_step, "step_memory_gib", memory)
    return calls, extra


def test_fit_finds_the_largest_group_multiple_and_checks_it_with_autotuning(compiles):
    calls, extra = compiles
    extra["gib"] = 0.25
    out = train_step.fit_batch(_args(), "init")
    # 0.5 + 0.1 b <= 30 -> b <= 295, in groups of 32: 288 (29.3 GiB, 29.55 with autotuning).
    assert out["largest_batch"] == 288 and out["smallest_batch_over"] == 320
    assert out["xla_mem_gib"] == pytest.approx(29.55, abs=0.01)
    assert out["autotuned_check"] == {288: pytest.approx(29.55)}
    assert [c for c in calls if c[1]] == [(288, True)]  # one full compile, of the answer
    assert {b for b, _ in calls} == {128, 256, 288, 320}


def test_fit_steps_down_when_autotuning_tips_the_answer_over(compiles):
    calls, extra = compiles
    extra["gib"] = 1.0  # 288 -> 30.3 GiB with autotuning: over
    out = train_step.fit_batch(_args(), "init")
    assert out["largest_batch"] == 256 and out["smallest_batch_over"] == 288
    assert [c for c in calls if c[1]] == [(288, True), (256, True)]


def test_fit_without_the_check_compiles_nothing_with_autotuning(compiles):
    calls, extra = compiles
    extra["gib"] = 1.0  # would tip 288 over, but is never compiled
    out = train_step.fit_batch(_args(fit_no_check=True), "init")
    assert out["largest_batch"] == 288 and out["xla_mem_gib"] == pytest.approx(29.3, abs=0.01)
    assert out["autotuned_check"] is None and not [c for c in calls if c[1]]


def test_fit_reports_none_when_even_one_group_is_too_big(compiles):
    out = train_step.fit_batch(_args(fit_gib=2.0), "init")
    assert out["largest_batch"] is None and out["smallest_batch_over"] == 32


def test_fit_needs_two_batches(compiles):
    with pytest.raises(SystemExit, match="two different batches"):
        train_step.fit_batch(_args(batch=[128, 128]), "init")


@pytest.mark.slow
def test_tvl1_bench_measures_both_and_carries_its_pairs_to_a_host_without_opencv(tmp_path):
    """bench/tvl1.py on tiny frames: OpenCV's rate, ours and their agreement, also from a saved file."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    common = [sys.executable, "bench/tvl1.py", "--sizes", "40x32", "--pairs", "2", "--repeats", "1"]

    def rows(*extra):
        out = subprocess.run([*common, *extra], cwd=root, capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    rows("--cores", "1", "--save_pairs", str(tmp_path / "pairs.npz"))
    opencv, ours = rows("--load_pairs", str(tmp_path / "pairs.npz"), "--batch", "2")
    assert opencv["backend"] == "opencv" and opencv["pairs_per_s_one_core"] > 0
    assert ours["backend"] == "jax" and ours["batch"] == 2 and ours["pairs_per_s"] > 0
    assert ours["epe_vs_opencv_mean"] <= 0.1 and ours["epe_vs_opencv_p99"] <= 1.0


TINY = (
    "--frames 8 --size 32 --width 0.125 --num_mixed_3 1 --num_mixed_4 1 --num_mixed_5 1 "
    "--queue 16 --bn_group 8 --segments 2 --seg_len 2"
)


def _run_bench(monkeypatch, capsys, argv: str) -> list[dict]:
    monkeypatch.setattr("sys.argv", ["train_step.py", *argv.split()])
    train_step.main()
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_device_augmentation_alone_reports_its_time_and_the_batch_as_shipped_and_fed(monkeypatch, capsys):
    argv = f"--batch 8 --stage init --on_device none color resize --augment_only --steps 1 {TINY}"
    by = {r["on_device"]: r for r in _run_bench(monkeypatch, capsys, argv)}
    assert list(by) == ["none", "color", "resize"]
    assert by["none"]["augment_ms"] == 0.0
    assert by["color"]["augment_ms"] > 0 and by["resize"]["augment_ms"] > 0
    # 'resize' ships whole stored frames (and not the anchor's); every setting feeds the same batch.
    shipped = {k: r["batch_mb_shipped"] for k, r in by.items()}
    assert shipped["resize"] > shipped["none"] == shipped["color"]
    assert len({r["batch_mb_fed"] for r in by.values()}) == 1


@pytest.mark.slow
def test_one_compiled_step_is_timed_after_each_on_device_setting(monkeypatch, capsys, tmp_path):
    rows = _run_bench(
        monkeypatch,
        capsys,
        f"--batch 8 --stage moco --on_device none resize --steps 1 --warmup 1 --profile {tmp_path} {TINY}",
    )
    assert [r["on_device"] for r in rows] == ["none", "resize"]
    assert rows[0]["compile_s"] > 0 and rows[1]["compile_s"] == 0.0  # compiled once
    assert all(np.isfinite(r["loss"]) and r["step_s"] > 0 for r in rows)  # the traced steps' state
