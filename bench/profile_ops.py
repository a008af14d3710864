"""Top costs of a jitted step from a `jax.profiler` trace: by HLO op, by kind of op, by JAX primitive
and by network layer.

    python bench/profile_ops.py TRACE_DIR [--hlo HLO.txt] [--top 15]

`bench/train_step.py --profile DIR` traces a few steps, writes the step's optimised HLO next to the
trace and prints this summary. The trace is read with `jax.profiler.ProfileData`. On a GPU the
device plane holds one event per kernel; each carries the HLO op that launched it (`hlo_op`), but
kernels that XLA groups into a command buffer (a CUDA graph) all carry the command buffer's name, so
a kernel whose name is an HLO instruction's (`loop_convert_fusion_8` for `loop_convert_fusion.8`)
is attributed to that instruction instead. Where a device plane has an "XLA Ops" line (TPUs, some
GPU versions), its op events are used. On the CPU the host threads' events that name an HLO op are.

With the HLO text, each op gets its kind (convolution, fusion kind, custom-call target such as
cuDNN's convolution) and JAX's name for it (the `op_name` metadata: for a fusion, its own or its
body's), from which come the primitive (`select_and_scatter`, `conv_general_dilated`, ...), the
pass (backward where JAX's name has `transpose(`) and the layer (`backbone/<layer>`). XLA may
launch one kernel for several identical fusions (`deduplicated_name`): their time then goes to the
one whose name the kernel carries.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
from collections.abc import Container
from pathlib import Path

# `  %name = shape opcode(operands), attributes` (the % is optional in newer HLO text).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*.*?\s(?P<op>[a-z][\w\-]*)\(")
# `%name (params) -> shape {` or `ENTRY %name ... {`: the start of a computation.
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_TARGET = re.compile(r'custom_call_target="(?P<target>[^"]+)"')
_FUSION_KIND = re.compile(r"kind=(?P<kind>k\w+)")
_CALLS = re.compile(r"calls=%?(?P<callee>[\w.\-]+)")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]+)"')


@dataclasses.dataclass(frozen=True)
class HloOp:
    """What the HLO text says of one instruction."""

    kind: str  # opcode; `custom-call:<target>`; `fusion:<kind>` (kLoop, kInput, kOutput, kCustom)
    op_name: str  # JAX's name of the op ('' where the text has none)


def hlo_ops(hlo_text: str) -> dict[str, HloOp]:
    """{instruction name: HloOp} for every instruction of an HLO module's text.

    A fusion without an op_name of its own takes its body's: the ROOT's, else the last one named.
    """
    ops, callee_of, body_name = {}, {}, {}
    computation, root_name, last_name = None, "", ""
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            if (c := _COMPUTATION.match(line)) and " = " not in line:
                computation, root_name, last_name = c["name"], "", ""
            elif line.startswith("}") and computation:
                body_name[computation] = root_name or last_name
                computation = None
            continue
        kind = m["op"]
        if kind == "custom-call" and (t := _TARGET.search(line)):
            kind = f"custom-call:{t['target']}"
        elif kind == "fusion" and (k := _FUSION_KIND.search(line)):
            kind = f"fusion:{k['kind']}"
        op_name = n["op_name"] if (n := _OP_NAME.search(line)) else ""
        if op_name:
            last_name = op_name
            if line.lstrip().startswith("ROOT"):
                root_name = op_name
        if kind.startswith("fusion") and (c := _CALLS.search(line)):
            callee_of[m["name"]] = c["callee"]
        ops[m["name"]] = HloOp(kind, op_name)
    for name, callee in callee_of.items():
        if not ops[name].op_name and body_name.get(callee):
            ops[name] = HloOp(ops[name].kind, body_name[callee])
    return ops


def kernel_op(kernel: str, hlo_op: str | None, known: Container[str]) -> str:
    """The HLO op a device kernel event belongs to (see the module docstring).

    kernel: the event's name; hlo_op: its `hlo_op` stat; known: the module's instruction names.
    """
    if kernel.startswith("Memset"):
        return "memset"
    if kernel.lower().startswith("memcpy"):
        return "memcpy"
    as_instruction = re.sub(r"_(\d+)$", r".\1", kernel)
    if as_instruction in known:
        return as_instruction
    if kernel in known:
        return kernel
    if hlo_op and not hlo_op.startswith("command_buffer"):
        return hlo_op
    # A library kernel (cuBLAS, cuDNN) inside a command buffer: only its own name is known.
    return f"{hlo_op}: {kernel[:60]}" if hlo_op else kernel[:80]


def latest_xplane(trace_dir: str | Path) -> Path:
    """The newest *.xplane.pb under a `jax.profiler.trace` directory."""
    files = sorted(Path(trace_dir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}; was it written by jax.profiler.trace?")
    return files[-1]


def op_times(xplane: str | Path, known: Container[str] = ()) -> tuple[dict[str, float], str]:
    """({HLO op: total seconds over the trace}, where the times come from).

    known: the step's instruction names (hlo_ops' keys), to attribute kernels of command buffers.
    """
    from jax.profiler import ProfileData

    planes = list(ProfileData.from_file(str(xplane)).planes)
    totals: dict[str, float] = collections.defaultdict(float)
    devices = [p for p in planes if p.name.startswith("/device:") and "CUSTOM" not in p.name]
    lines = [line for p in devices for line in p.lines]
    xla_ops = [line for line in lines if line.name == "XLA Ops"]
    if xla_ops:
        for line in xla_ops:
            for event in line.events:
                totals[event.name] += event.duration_ns * 1e-9
        return dict(totals), "device op events (XLA Ops lines)"
    start, end = float("inf"), 0.0
    for line in lines:
        for event in line.events:
            stats = dict(event.stats)
            totals[kernel_op(event.name, stats.get("hlo_op"), known)] += event.duration_ns * 1e-9
            start, end = min(start, event.start_ns), max(end, event.start_ns + event.duration_ns)
    if totals:
        busy = sum(totals.values())
        span = (end - start) * 1e-9
        return dict(totals), (
            f"device kernels; {busy:.4f} s of kernels in a {span:.4f} s span on the device "
            f"({100 * busy / span:.0f}% busy)"
        )
    for plane in planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    totals[str(stats["hlo_op"])] += event.duration_ns * 1e-9
    return dict(totals), "host threads' HLO op events"


def primitive(op_name: str) -> str:
    """`select_and_scatter (backward)` from JAX's name of an op ('?' where there is none)."""
    if not op_name:
        return "?"
    pass_ = "backward" if "transpose(" in op_name else "forward"
    return f"{op_name.rsplit('/', 1)[-1]} ({pass_})"


def layer(op_name: str) -> str:
    """The network layer (`backbone/mixed_3c`) or, outside the backbone, the first scope of JAX's
    name of an op, without the jit/jvp/transpose wrappers."""
    if not op_name:
        return "?"
    if m := re.search(r"backbone/([^/]+)", op_name):
        return f"backbone/{m.group(1)}"
    parts = [p for p in op_name.split("/") if not re.fullmatch(r"(jit|jvp|transpose)\(.*\)", p)]
    return parts[0] if parts else "?"


def summarize(
    trace_dir: str | Path, hlo_text: str | None = None, top: int = 15, wall_s: float | None = None
) -> str:
    """A text table of the top ops and of the time per kind, primitive and layer (percent of all
    op time).

    wall_s: wall time of the traced steps, to say how much of it the op events account for (on
    the CPU much of it is not attributed to any op: work inside XNNPACK's own threads, waits).
    """
    ops = hlo_ops(hlo_text) if hlo_text else {}
    times, source = op_times(latest_xplane(trace_dir), ops)
    if not times:
        return f"no HLO op events in the trace under {trace_dir}"
    return table(times, ops, source, top, wall_s)


def table(
    times: dict[str, float], ops: dict[str, HloOp], source: str, top: int = 15, wall_s: float | None = None
) -> str:
    """summarize's text from {op: seconds} and the module's hlo_ops."""
    total = sum(times.values())
    head = f"op time {total:.4f} s from {source}"
    if wall_s:
        head += f"; the traced steps took {wall_s:.4f} s ({100 * total / wall_s:.0f}% attributed to ops)"
    lines = [head, f"{'share':>7}  {'seconds':>9}  op (kind) JAX name"]
    unknown = HloOp("?", "")
    for name, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        op = ops.get(name, unknown)
        lines.append(f"{100 * t / total:6.1f}%  {t:9.4f}  {name} ({op.kind}) {op.op_name}".rstrip())
    groupings = {"op family (name without its number)": lambda name: re.sub(r"[._]\d+$", "", name)}
    if ops:
        jax_name = lambda name: ops.get(name, unknown).op_name  # noqa: E731
        groupings["kind"] = lambda name: ops.get(name, unknown).kind
        groupings["primitive (JAX's name, last part)"] = lambda name: primitive(jax_name(name))
        groupings["layer"] = lambda name: layer(jax_name(name))
    for title, group in groupings.items():
        sums: dict[str, float] = collections.defaultdict(float)
        for name, t in times.items():
            sums[group(name)] += t
        lines.append(f"by {title}:")
        for key, t in sorted(sums.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{100 * t / total:6.1f}%  {t:9.4f}  {key}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace_dir")
    p.add_argument("--hlo", help="the step's optimised HLO text (compiled.as_text()), for op kinds")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    print(summarize(a.trace_dir, Path(a.hlo).read_text() if a.hlo else None, a.top))


if __name__ == "__main__":
    main()
