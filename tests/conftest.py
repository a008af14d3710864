"""Test set-up: 8 emulated CPU devices, so every test run exercises sharding, and XLA flags
that make its CPU compiler faster (COMPILE_FLAGS).

Session fixtures: the pattern dataset and one tiny schedule run, shared by test_main and
test_evaluation. A persistent compilation cache for the session (inherited by `main.py`
subprocesses) lets runs of the same train step in several tests and processes compile it once.

The suite runs on pytest-xdist workers (pyproject's addopts), the controller's cache directory
shared by all of them. Each test is in a group that one worker runs whole
(`pytest_collection_modifyitems` below), so module and session fixtures are built once: a group
per module, and one for every test of the session's schedule run, which test_main and
test_evaluation share (and for tests marked `xdist_group("schedule")`, which train one of its
stages again and so run after it, its steps in the compilation cache).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

# XLA's CPU compiler spends much of the suite's time: compiling the tiny networks takes minutes
# where running their steps takes seconds. LLVM at -O1 instead of XLA's default -O3 compiles the
# parameter initialisations twice as fast and the steps in the same time, and the steps run as
# fast (docs/log.md, "Test suite and installations"). A flag is kept only if this jaxlib accepts it
# (XLA aborts on an unknown one); a user's own XLA_FLAGS are left alone. jaxlib 0.10's
# --xla_cpu_use_fusion_emitters=false would compile the train steps a third faster still, but
# TV-L1's program more than ten times slower.
COMPILE_FLAGS = ("--xla_backend_optimization_level=1",)


def _accepted(flag: str) -> bool:
    probe = [sys.executable, "-c", "import jax; jax.devices('cpu')"]
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(probe, env=env, capture_output=True).returncode == 0


os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "XLA_FLAGS" not in os.environ:  # set once by pytest's main process; its workers inherit it
    os.environ["XLA_FLAGS"] = " ".join(f for f in COMPILE_FLAGS if _accepted(f))
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="cvtcl_jax_test_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


import pytest  # noqa: E402

from cvtcl_jax import modes  # noqa: E402
from tests import tiny_config  # noqa: E402
from tests.pattern_records import write_pattern_dataset  # noqa: E402

LENGTHS = [40, 24, 30, 50, 35, 20, 44, 36, 25, 33, 41, 48]  # 8 train, 4 test videos

# The longest groups (3-8 minutes each on a worker, longest first) are handed out first, so no
# worker starts one of them while the others are running out of work.
LONG_GROUPS = (
    "schedule",
    "test_import_weights",
    "test_steps",
    "test_evaluation",
    "test_fidelity",
    "test_models",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Puts each test in an xdist group (its module's, or 'schedule') and the long groups first.

    tryfirst: xdist's worker hook, registered after this conftest and so called before it
    otherwise, reads the marks. Every worker sorts the same collection the same way, as xdist
    requires.
    """

    def group(item):
        if (mark := item.get_closest_marker("xdist_group")) is not None:
            return mark.args[0] if mark.args else mark.kwargs["name"]
        if "schedule_run" in getattr(item, "fixturenames", ()):
            return "schedule"
        return item.module.__name__.rsplit(".", 1)[-1]

    for item in items:
        if item.get_closest_marker("xdist_group") is None:  # a test's own group wins
            item.add_marker(pytest.mark.xdist_group(group(item)))
        if "schedule_run" in getattr(item, "fixturenames", ()):  # the whole schedule runs first
            item.add_marker(pytest.mark.slow)
    rank = {g: i for i, g in enumerate(LONG_GROUPS)}
    items.sort(key=lambda item: rank.get(group(item), len(rank)))


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The pattern dataset of the main.py tests (labels video % 3: no test class is trained)."""
    root = tmp_path_factory.mktemp("pattern_data")
    write_pattern_dataset(root, LENGTHS, videos_per_shard=3)
    return root


@pytest.fixture(scope="session")
def schedule_run(data, tmp_path_factory):
    """One whole schedule with the tiny config: every stage, the exports and the evaluation."""
    wd = tmp_path_factory.mktemp("schedule")
    summary = modes.run(tiny_config.run_config(data, "schedule"), wd)
    return wd, summary
