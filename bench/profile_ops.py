"""Top costs of a jitted step from a `jax.profiler` trace, by HLO op and by kind of op.

    python bench/profile_ops.py TRACE_DIR [--hlo HLO.txt] [--top 15]

`bench/train_step.py --profile DIR` traces a few steps, writes the step's optimised HLO next to the
trace and prints this summary. The trace's op events are read with `jax.profiler.ProfileData`: on a
GPU the "XLA Ops" lines of the device planes (kernel time on the device), on the CPU the host
threads' events that name an HLO op. With the HLO text, each op name is mapped to its opcode
(convolution, fusion kind, custom-call target such as cuDNN's convolution), so time can also be
summed by kind: where the step's time goes, not only which fusion is slowest.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

# `  %name = shape opcode(operands), attributes` (the % is optional in newer HLO text).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*.*?\s(?P<op>[a-z][\w\-]*)\(")
_TARGET = re.compile(r'custom_call_target="(?P<target>[^"]+)"')
_FUSION_KIND = re.compile(r"kind=(?P<kind>k\w+)")


def op_kinds(hlo_text: str) -> dict[str, str]:
    """{instruction name: kind} for every instruction of an HLO module's text.

    kind is the opcode, `custom-call:<target>` for custom calls (cuDNN convolutions, cuBLAS
    matmuls) and `fusion:<kind>` for fusions (kLoop, kInput, kOutput, kCustom).
    """
    kinds = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        kind = m["op"]
        if kind == "custom-call" and (t := _TARGET.search(line)):
            kind = f"custom-call:{t['target']}"
        elif kind == "fusion" and (k := _FUSION_KIND.search(line)):
            kind = f"fusion:{k['kind']}"
        kinds[m["name"]] = kind
    return kinds


def latest_xplane(trace_dir: str | Path) -> Path:
    """The newest *.xplane.pb under a `jax.profiler.trace` directory."""
    files = sorted(Path(trace_dir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}; was it written by jax.profiler.trace?")
    return files[-1]


def op_times(xplane: str | Path) -> tuple[dict[str, float], str]:
    """({HLO op name: total seconds over the trace}, where the times come from)."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(str(xplane))
    planes = list(data.planes)
    totals: dict[str, float] = collections.defaultdict(float)
    devices = [p for p in planes if p.name.startswith("/device:") and "CUSTOM" not in p.name]
    for plane in devices:
        for line in plane.lines:
            if line.name == "XLA Ops":
                for event in line.events:
                    totals[event.name] += event.duration_ns * 1e-9
    if totals:
        return dict(totals), "device kernels (XLA Ops lines)"
    for plane in planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    totals[str(stats["hlo_op"])] += event.duration_ns * 1e-9
    return dict(totals), "host threads' HLO op events"


def summarize(
    trace_dir: str | Path, hlo_text: str | None = None, top: int = 15, wall_s: float | None = None
) -> str:
    """A text table of the top ops and of the time per kind of op (percent of all op time).

    wall_s: wall time of the traced steps, to say how much of it the op events account for (on
    the CPU much of it is not attributed to any op: work inside XNNPACK's own threads, waits).
    """
    times, source = op_times(latest_xplane(trace_dir))
    if not times:
        return f"no HLO op events in the trace under {trace_dir}"
    total = sum(times.values())
    kinds = op_kinds(hlo_text) if hlo_text else {}
    head = f"op time {total:.4f} s from {source}"
    if wall_s:
        head += f"; the traced steps took {wall_s:.4f} s ({100 * total / wall_s:.0f}% attributed to ops)"
    lines = [head, f"{'share':>7}  {'seconds':>9}  op (kind)"]
    for name, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * t / total:6.1f}%  {t:9.4f}  {name} ({kinds.get(name, '?')})")
    groupings = {"op family (name without its number)": lambda name: re.sub(r"\.\d+$", "", name)}
    if kinds:
        groupings["kind"] = lambda name: kinds.get(name, "?")
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
