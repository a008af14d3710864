"""The package layout of the README: layers that import only downwards, every module listed."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The README's layers, top to bottom: a module may import its own layer and the ones above.
LAYERS = [
    ("console", "sharding", "data", "flow"),
    ("models",),
    ("losses", "queue", "state", "steps", "optim", "checkpoints", "export"),
    ("training",),
    ("eval",),
    ("modes", "report"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    for path in sorted((ROOT / "cvtcl_jax").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if len(parts) > 1 and parts[1] != "__init__":
            yield path, parts


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            if node.module == "cvtcl_jax":
                yield from (f"cvtcl_jax.{a.name}" for a in node.names)


def test_imports_follow_the_layers():
    against = []
    for path, parts in _modules():
        assert parts[1] in RANK, f"{path} is in no layer of the README's layout"
        for name in _imports(path):
            top = name.split(".")
            # Only the demo mode generates a set and runs data_prep on it.
            if top[0] in ("data_prep", "generated") and parts[1] != "modes":
                against.append((str(path), name))
            if top[0] == "cvtcl_jax" and len(top) > 1 and RANK[top[1]] > RANK[parts[1]]:
                against.append((str(path), name))
    assert not against, against


def test_data_prep_uses_only_the_data_and_flow_packages_and_the_console():
    for path in (ROOT / "data_prep").glob("*.py"):
        used = {n.split(".")[1] for n in _imports(path) if n.startswith("cvtcl_jax.")}
        assert used <= {"data", "flow", "console"}, (path, used)


def test_generated_sets_stand_alone():
    """The generated sets are data, written with NumPy, OpenCV and the standard library alone: no
    part of the project."""
    for path in (ROOT / "generated").glob("*.py"):
        used = {n.split(".")[0] for n in _imports(path)} - set(sys.stdlib_module_names)
        assert used <= {"cv2", "numpy", "generated"}, (path, used)


def test_readme_layout_names_every_package_and_module_in_layer_order():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## Documentation")]
    listed = [line for line in layout.splitlines() if line.startswith("    cvtcl_jax/")]
    order = [RANK[re.match(r"    cvtcl_jax/(\w+)", line).group(1)] for line in listed]
    assert order == sorted(order), "the README lists the layers out of order"
    text = " ".join(layout.split())
    for path, parts in _modules():
        if len(parts) == 2:
            assert path.name in text, f"the README's layout does not name {path.relative_to(ROOT)}"
        else:
            assert f"cvtcl_jax/{parts[1]}/" in text, (
                f"the README's layout does not name cvtcl_jax/{parts[1]}/"
            )


def test_each_package_docstring_names_its_modules():
    for init in (ROOT / "cvtcl_jax").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        for module in init.parent.glob("*.py"):
            if module.name != "__init__.py":
                assert re.search(rf"\b{module.stem}\b", doc), f"{init} does not describe {module.name}"


# A function longer than this holds parts that a name would say better (a screen of code).
LONGEST_FUNCTION = 70


def test_no_function_is_longer_than_a_screen():
    long = []
    for path, _ in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_one_training_skeleton():
    """Everything that trains goes through training/trainer.py's Trainer: it alone builds a Loop."""
    builders = []
    for path, _ in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Loop":
                builders.append(str(path.relative_to(ROOT)))
    assert builders == ["cvtcl_jax/training/trainer.py"], builders
