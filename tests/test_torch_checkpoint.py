"""PyTorch checkpoint files read without PyTorch: files real PyTorch wrote, in both serialisations
(tests/fixtures/make_torch_fixtures.py), and pickles that try to run code."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cvtcl_jax.models.torch_checkpoint import TorchFileError, load_torch_file
from tests import torch_files

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["torch_zip.pt", "torch_legacy.pt"])
def test_reads_what_pytorch_wrote_in_both_serialisations(name):
    obj = load_torch_file(FIXTURES / name)
    expected = np.load(FIXTURES / "torch_expected.npz")
    for key in expected.files:
        got = obj["module"][key[len("module/") :]] if key.startswith("module/") else obj[key]
        want = expected[key]
        assert got.shape == want.shape, key
        if key == "bfloat16":
            assert str(got.dtype) == "bfloat16"
        else:
            assert got.dtype == want.dtype, key
        np.testing.assert_array_equal(np.asarray(got, want.dtype), want, err_msg=key)
    # Views of one storage keep their offsets and strides.
    np.testing.assert_array_equal(obj["view_rows"], obj["float32"][1:3])
    np.testing.assert_array_equal(obj["transposed"], obj["float32"].T)
    np.testing.assert_array_equal(obj["every_other"], obj["float32"][:, 1::2])
    assert obj["nested"]["a"] == [1, 2.5, "x", None, (3, 4)]
    assert obj["nested"]["b"]["deep"].shape == (1, 0)
    assert obj["bytes"] == b"\x00\xffcvtcl" and obj["size"] == (2, 3) and obj["epoch"] == 7
    assert list(obj["module"]) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]


class _Call:
    """Pickles as a call of `module.name(*args)`."""

    def __init__(self, module, name, *args):
        self.module, self.name, self.args = module, name, args

    def __reduce__(self):
        import importlib

        return getattr(importlib.import_module(self.module), self.name), self.args


def _malicious_zip(path: Path, payload) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"state_dict": {"x": payload}}, protocol=2))
        z.writestr("archive/version", "3\n")


def _malicious_legacy(path: Path, payload) -> None:
    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    pickle.dump({"state_dict": payload}, buf, protocol=2)
    pickle.dump([], buf, protocol=2)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("write", [_malicious_zip, _malicious_legacy], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    "module, name", [("os", "system"), ("builtins", "eval"), ("subprocess", "check_call")]
)
def test_a_pickle_that_calls_code_is_refused_and_the_call_never_happens(tmp_path, write, module, name):
    marker = tmp_path / "ran"
    command = f"touch {marker}"
    args = {
        "system": (command,),
        "eval": (f"open({str(marker)!r}, 'w')",),
        "check_call": (["touch", str(marker)],),
    }
    path = tmp_path / "evil.pth.tar"
    write(path, _Call(module, name, *args[name]))
    with pytest.raises(TorchFileError) as e:
        load_torch_file(path)
    assert f"{'posix' if name == 'system' else module}.{name}" in str(e.value)
    assert not marker.exists()


def test_a_refused_global_is_never_imported(tmp_path):
    """The reader refuses a global before importing its module (checked in a fresh process)."""
    path = tmp_path / "evil.pt"
    _malicious_zip(path, _Call("webbrowser", "open", "about:blank"))
    code = (
        "import sys\n"
        "from cvtcl_jax.models.torch_checkpoint import TorchFileError, load_torch_file\n"
        f"try:\n    load_torch_file({str(path)!r})\nexcept TorchFileError as e:\n    print(e)\n"
        "assert 'webbrowser' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, env=os.environ
    )
    assert "webbrowser.open" in out.stdout


def test_damaged_and_foreign_files_are_named(tmp_path):
    state = {"state_dict": {"w": np.arange(1000, dtype=np.float32)}}
    full = tmp_path / "full.tar"
    torch_files.save_legacy(state, full)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full.read_bytes()[:-100])
    with pytest.raises(TorchFileError, match="truncated"):
        load_torch_file(cut)
    cut_pickle = tmp_path / "cut_pickle.tar"
    cut_pickle.write_bytes(full.read_bytes()[:60])
    with pytest.raises(TorchFileError, match="damaged|truncated"):
        load_torch_file(cut_pickle)
    zipped = tmp_path / "zipped.pth"
    torch_files.save_zip(state, zipped)
    with zipfile.ZipFile(zipped) as z, zipfile.ZipFile(tmp_path / "short.pth", "w") as out:
        for item in z.infolist():
            data = z.read(item)
            out.writestr(item, data[:-8] if item.filename.endswith("data/0") else data)
    with pytest.raises(TorchFileError, match="holds 998 of 1000 elements"):
        load_torch_file(tmp_path / "short.pth")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(TorchFileError, match="not a PyTorch checkpoint|neither a zip nor"):
        load_torch_file(text)
    with pytest.raises(TorchFileError, match="does not exist"):
        load_torch_file(tmp_path / "absent.pth")


def test_the_test_writer_round_trips_shared_storages_and_views(tmp_path):
    base = np.arange(30, dtype=np.float32).reshape(5, 6)
    obj = {"a": base, "b": base, "c": base[1:4, ::2], "d": np.array([3, 4], np.int64)}
    for save in (torch_files.save_zip, torch_files.save_legacy):
        save(obj, tmp_path / "x.pt")
        back = load_torch_file(tmp_path / "x.pt")
        for key, value in obj.items():
            np.testing.assert_array_equal(back[key], value)
