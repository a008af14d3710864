"""What a researcher sees: the quiet console with its log file, and the report of a run
(cvtcl_jax/console.py, cvtcl_jax/report.py)."""

from __future__ import annotations

import base64
import html.parser
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from cvtcl_jax import console, report

REPO = Path(__file__).resolve().parents[1]


class _Page(html.parser.HTMLParser):
    """The page's images (alt text, PNG bytes), headings and table cells."""

    def __init__(self):
        super().__init__()
        self.images, self.headings, self.cells, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            prefix = "data:image/png;base64,"
            assert attrs["src"].startswith(prefix), "every image is embedded"
            self.images.append((attrs["alt"], base64.b64decode(attrs["src"][len(prefix) :])))
        self._in = tag

    def handle_data(self, data):
        if self._in in ("h2", "h3"):
            self.headings.append(data)
        elif self._in == "td":
            self.cells.append(data)


def _parsed(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    page.close()
    return page


def _check_pngs(page: _Page) -> None:
    for alt, png in page.images:
        assert png.startswith(b"\x89PNG"), alt
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50, alt
        assert pixels.std() > 0, f"{alt} is blank"


@pytest.mark.slow
def test_a_finished_schedule_gives_one_self_contained_page_the_same_every_time(schedule_run, tmp_path):
    source, _ = schedule_run
    wd = tmp_path / "schedule"
    shutil.copytree(source, wd, ignore=shutil.ignore_patterns("report.html"))
    first = report.make_report(wd).read_bytes()
    again = subprocess.run(
        [sys.executable, "-m", "cvtcl_jax.report", str(wd)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout.strip() == str(wd / report.REPORT)
    assert (wd / report.REPORT).read_bytes() == first
    page = _parsed(wd / report.REPORT)
    assert {"Results", "Training", "Pictures"} <= set(page.headings)
    assert {"init_rgb", "init_flow", "cotrain1_rgb", "cotrain1_flow"} <= set(page.headings)
    alts = [alt for alt, _ in page.images]
    assert "retrieval" in alts and "init_rgb: loss terms and learning rate" in alts
    assert alts.count("retrieval/two_stream/nearest_neighbours") == 3  # random init, init, co-trained
    assert {"random_init", "init", "cotrain", "two_stream"} <= set(page.cells)
    _check_pngs(page)


def test_the_console_is_the_terminal_and_the_rest_goes_to_the_log(tmp_path):
    """A process that starts the console: its own lines on the terminal, print(), logging and
    C-level writes to the standard streams in the log file; progress lines every quarter."""
    code = (
        "import logging, os, sys\n"
        "from cvtcl_jax import console\n"
        f"console.start({str(tmp_path / 'logs')!r}, 'unit')\n"
        "print('a library print'); logging.warning('a library warning'); os.write(2, b'a C-level write')\n"
        "console.say('a phase starts'); console.warn('a video failed')\n"
        "bar = console.Progress(100, 'stage', unit='batch')\n"
        "[bar.update(n, loss=1.0 / n) for n in range(1, 101)]\n"
        "console.say('the phase ended')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    terminal = proc.stdout + proc.stderr
    (log,) = (tmp_path / "logs").glob("unit-*.log")
    assert proc.stdout.splitlines() == [f"log: {log}", "a phase starts", "the phase ended"]
    assert proc.stderr.splitlines()[0] == "warning: a video failed"
    assert [line.split(":")[1].split("(")[0].strip() for line in proc.stderr.splitlines()[1:]] == [
        "25/100 batches",
        "50/100 batches",
        "75/100 batches",
    ]
    assert "loss 0.04" in proc.stderr.splitlines()[1]
    text = log.read_text()
    for line in ("a library print", "a library warning", "a C-level write"):
        assert line in text and line not in terminal
    assert "warning: a video failed" in text


def test_without_start_the_console_writes_to_the_standard_streams(capsys):
    console.say("said")
    console.warn("warned")
    assert capsys.readouterr() == ("said\n", "warning: warned\n")


@pytest.mark.slow
@pytest.mark.xdist_group("schedule")  # after the schedule, whose init step this demo's is
def test_the_demo_prints_a_page_of_console_and_writes_its_report(tmp_path):
    """The demo (a small set, short initializations, no co-training) as a user runs it, its output a
    pipe: about 60 lines, everything else in WORKDIR/logs/, and the report at the end equal to one
    made afterwards."""
    wd = tmp_path / "demo"
    overrides = {
        "demo.groups": 3,
        "demo.clips_per_group": 1,
        "demo.num_frames": 24,
        "global_batch": 8,
        "queue_size": 16,
        "schedule.init_epochs": 2,
        "schedule.cotrain_cycles": 0,  # co-training's console is a stage's like the others'
        "schedule.eval_stages": "('random_init', 'init')",
        "train.retrieval_every_epochs": 1,
        # The console and the report are the same with the smallest network, which compiles faster.
        "model.num_mixed_3": 1,
        "model.num_mixed_5": 1,
    }
    cmd = [sys.executable, "main.py", "--config=configs/demo.py", f"--workdir={wd}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    # On eight devices, the demo's network, clips, batch, queue and rates being the tiny config's,
    # its train step is the schedule's, loaded from the session's compilation cache.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "8"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    (log,) = (wd / "logs").glob("main-*.log")
    assert lines[0] == f"log: {log}"
    said = "\n".join(lines)
    for stage in ("init_rgb", "init_flow"):
        assert f"{stage}: the " in said and f"{stage}: done in " in said
    assert "evaluation on cvtcl_ucf101/split1_48px_q90" in said and f"report: {wd / report.REPORT}" in said
    text = log.read_text()
    assert "train/loss" in text  # the per-step metrics, as clu's logging writer wrote them
    assert "Dataset cvtcl_ucf101 downloaded and prepared" in text  # TFDS's notice
    assert "Given directory is read only" in text or "orbax" in text.lower()  # Orbax's notices
    written = (wd / report.REPORT).read_bytes()
    assert report.make_report(wd).read_bytes() == written
    _check_pngs(_parsed(wd / report.REPORT))
