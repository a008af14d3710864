"""The fidelity benchmark's family of generated sets: kinds of motion, a random look per video, a
moving camera.

    python -m generated.motion_set --out_dir=RAW [--variant=walk --groups=9 --clips_per_group=2]

Unlike the demo's set (generated/synthetic.py: speeds, looks shared across classes, a surface
pattern per class), the class here is the kind of an object's motion and nothing else:

  Slide      translates horizontally, either way   Spin      rotates in place, either way
  SlideLeft  translates to the left                SpinCW    rotates clockwise (on screen)
  SlideRight translates to the right               SpinCCW   rotates counter-clockwise
  Rise       translates upwards                    Orbit     circles a point, either way
  Fall       translates downwards                  Shake     swings left and right
  Grow       expands about its centre              Shrink    contracts about its centre

Everything else is a nuisance drawn per video: the background's and the object's textures and
colours, the object's shape and size (half side 5, 7 or 9 pixels of a 48-pixel frame), its speed
(0.8-1.2x), start and direction, and the camera. The family's sets (VARIANTS, docs/fidelity.md)
differ in the label set, the shapes and the camera:

  walk         8 flip-consistent classes (a horizontal flip maps each to itself), squares and
               discs, a camera shaking by a damped random walk (about 0.3 pixels per frame)
  directional  8 flip-inconsistent classes (left and right slides, both spins, rise, fall, grow,
               shrink), boxes, ellipses and triangles, the camera's signature: the view alternates
               between two offsets that differ by a fixed per-video vector (up to a pixel each
               way), so every clip of a video carries the same global flow
  signature    6 flip-consistent classes (Slide, Spin, Rise, Fall, Grow, Shrink), squares only,
               the camera's signature
  mixed        walk's 8 classes, all five shapes, the walk and the signature together
  steered      directional's 8 classes, squares, discs and triangles, walk's camera

Written as UCF101's layout (RAW/UCF-101/<Class>/v_<Class>_gXX_cYY.avi and RAW/ucfTrainTestlist/,
split n testing the n-th third of the groups), so `python -m data_prep.build --dataset=ucf101`
prepares it, with RAW/motion_set.json naming every video's nuisances by its video id (for
bench/flow_features.py).
Groups only decide the splits: no two videos share a look.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from generated.synthetic import texture, write_avi, write_ucf_lists

CLASSES = ("Slide", "Rise", "Fall", "Grow", "Shrink", "Spin", "Orbit", "Shake")  # the walk set's
DIRECTIONAL = ("SlideLeft", "SlideRight", "Rise", "Fall", "SpinCW", "SpinCCW", "Grow", "Shrink")
MOTIONS = CLASSES + ("SlideLeft", "SlideRight", "SpinCW", "SpinCCW")
SHAPES = ("square", "disc", "box", "ellipse", "triangle")
CAMERAS = ("walk", "signature", "both")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One set of the family: its classes (of MOTIONS), the objects' shapes (of SHAPES) and the
    camera (of CAMERAS: a damped random walk, a per-video signature, or their sum)."""

    classes: tuple[str, ...]
    shapes: tuple[str, ...]
    camera: str

    def __post_init__(self):
        unknown = [*set(self.classes) - set(MOTIONS), *set(self.shapes) - set(SHAPES)]
        if unknown or self.camera not in CAMERAS:
            raise ValueError(f"a variant of {MOTIONS}, {SHAPES} and one of {CAMERAS}; got {self}")


VARIANTS = {
    "walk": Variant(CLASSES, ("square", "disc"), "walk"),
    "directional": Variant(DIRECTIONAL, ("box", "ellipse", "triangle"), "signature"),
    "signature": Variant(("Slide", "Spin", "Rise", "Fall", "Grow", "Shrink"), ("square",), "signature"),
    "mixed": Variant(CLASSES, SHAPES, "both"),
    "steered": Variant(DIRECTIONAL, ("square", "disc", "triangle"), "walk"),
}
HALF_SIZES = (5.0, 7.0, 9.0)  # the object's half side (or radius), pixels at a 48-pixel short side
MARGIN = 8  # pixels of scene around the frame, for the camera's motion
TRANSLATION_SPEED = 0.75  # pixels per frame (x the video's 0.8-1.2)
SCALE_RANGE = (0.6, 1.4)  # Grow: the object's size from 0.6 to 1.4 times its half side
SPIN_SPEED = np.deg2rad(5.0)  # radians per frame
ORBIT = (9.0, 2 * np.pi / 32)  # radius (pixels), angular speed (radians per frame)
SHAKE = (5.0, 10.0)  # amplitude (pixels), period (frames)
CAMERA = (0.8, 0.3, MARGIN - 1.0)  # random walk: damping, step std (pixels), bound (pixels)
SIGNATURE = 1.0  # the signature's largest offset each way (pixels at a 48-pixel short side)
ASPECT = (0.6, 0.9)  # a box's or an ellipse's short side over its long side


def _pose(cls: str, t: np.ndarray, num_frames: int, rng) -> tuple[np.ndarray, ...]:
    """(x, y, angle, scale) per frame, (T,) each: the object's centre relative to the scene's
    centre (pixels), its rotation (radians, clockwise on screen) and its size factor."""
    tau = t - (num_frames - 1) / 2  # centred time, so translations pass the middle of the frame
    pace = rng.uniform(0.8, 1.2)
    way = rng.choice((-1.0, 1.0))  # the direction of the motions that hold both
    way = {"SlideLeft": -1.0, "SlideRight": 1.0, "SpinCW": 1.0, "SpinCCW": -1.0}.get(cls, way)
    x0, y0 = rng.uniform(-4, 4, 2)
    zeros, ones = np.zeros_like(tau), np.ones_like(tau)
    x, y, angle, scale = x0 + zeros, y0 + zeros, rng.uniform(0, 2 * np.pi) + zeros, ones
    v = TRANSLATION_SPEED * pace
    if cls in ("Slide", "SlideLeft", "SlideRight"):
        x = x0 + way * v * tau
    elif cls in ("Rise", "Fall"):
        y = y0 + (-1 if cls == "Rise" else 1) * v * tau
    elif cls in ("Grow", "Shrink"):
        lo, hi = SCALE_RANGE
        frac = t / max(num_frames - 1, 1)
        scale = lo + (hi - lo) * (frac if cls == "Grow" else 1 - frac)
    elif cls in ("Spin", "SpinCW", "SpinCCW"):
        angle = angle + way * SPIN_SPEED * pace * t
    elif cls == "Orbit":
        radius, omega = ORBIT
        phase = rng.uniform(0, 2 * np.pi) + way * omega * pace * t
        x, y = x0 + radius * np.cos(phase), y0 + radius * np.sin(phase)
    elif cls == "Shake":
        amplitude, period = SHAKE
        x = x0 + amplitude * np.sin(2 * np.pi * t / (period / pace) + rng.uniform(0, 2 * np.pi))
    else:
        raise ValueError(f"unknown motion class {cls!r}; known: {MOTIONS}")
    return x, y, angle, scale


def _camera(num_frames: int, kind: str, rng, unit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """((T, 2) camera offsets in pixels, (2,) the signature vector, zero without one). The walk: a
    damped random walk inside the scene's margin; the signature: odd frames offset by the vector."""
    damping, step, bound = CAMERA
    offsets = np.zeros((num_frames, 2))
    if kind in ("walk", "both"):
        offset = np.zeros(2)
        for i in range(num_frames):
            offsets[i] = offset
            offset = np.clip(damping * offset + rng.normal(0, step, 2), -bound, bound)
    signature = np.zeros(2)
    if kind in ("signature", "both"):
        signature = rng.uniform(-SIGNATURE, SIGNATURE, 2) * unit
        offsets[1::2] += signature
    return offsets, signature


def _mask(shape: str, half: float, side: int, rng) -> np.ndarray:
    """(side, side) float32 coverage of an object of `shape` and half size `half`, centred."""
    yy, xx = np.mgrid[0:side, 0:side] - (side - 1) / 2
    if shape == "square":
        inside = (np.abs(xx) <= half) & (np.abs(yy) <= half)
    elif shape == "disc":
        inside = np.hypot(xx, yy) <= half
    elif shape == "box":
        inside = (np.abs(xx) <= half) & (np.abs(yy) <= half * rng.uniform(*ASPECT))
    elif shape == "ellipse":
        inside = np.hypot(xx / half, yy / (half * rng.uniform(*ASPECT))) <= 1
    elif shape == "triangle":  # equilateral, its corners on the circle of radius `half`
        corners = [half * np.array([np.cos(a), np.sin(a)]) for a in -np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
        inside = np.ones_like(xx, bool)
        for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
            inside &= (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0]) >= 0
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return inside.astype(np.float32)


def _detailed_texture(rng, height, width, base):
    """A texture with fine detail over the smooth one, so that TV-L1 sees motion inside the object
    and the camera's motion on the background, not only at the object's edges."""
    fine = cv2.resize(rng.uniform(-30, 30, (height // 3, width // 3, 3)), (width, height))
    return np.clip(texture(rng, height, width, base) + fine, 0, 255)


def render_video(
    rng, cls: str, num_frames: int, height: int, width: int, variant: Variant = VARIANTS["walk"]
) -> tuple[list[np.ndarray], dict]:
    """(frames (num_frames, H, W, 3) uint8 BGR, nuisances) of one video of class `cls` with its
    own look; nuisances: shape, half size (pixels), start (x, y), camera signature (dx, dy) and the
    walk's mean step (pixels per frame)."""
    scene_h, scene_w = height + 2 * MARGIN, width + 2 * MARGIN
    background = _detailed_texture(rng, scene_h, scene_w, rng.uniform(40, 215, 3)).astype(np.float32)
    side = 64  # the object's texture, larger than its largest rendering
    obj = _detailed_texture(rng, side, side, rng.uniform(40, 215, 3)).astype(np.float32)
    unit = min(height, width) / 48
    half = rng.choice(HALF_SIZES) * unit
    shape = str(rng.choice(variant.shapes))
    mask = _mask(shape, half, side, rng)
    t = np.arange(num_frames, dtype=np.float64)
    x, y, angle, scale = _pose(cls, t, num_frames, rng)
    camera, signature = _camera(num_frames, variant.camera, rng, unit)
    frames = []
    for i in range(num_frames):
        # The object's texture moves with it (rotated, scaled, translated), so the flow inside the
        # object is the object's motion.
        c, s = scale[i] * np.cos(angle[i]), scale[i] * np.sin(angle[i])
        centre = np.array([(scene_w - 1) / 2 + x[i], (scene_h - 1) / 2 + y[i]])
        rot = np.array([[c, -s], [s, c]])
        m = np.hstack([rot, (centre - rot @ np.full(2, (side - 1) / 2))[:, None]])
        size = (scene_w, scene_h)
        alpha = cv2.warpAffine(mask, m, size, flags=cv2.INTER_LINEAR)[..., None]
        painted = cv2.warpAffine(obj, m, size, flags=cv2.INTER_LINEAR)
        scene = alpha * painted + (1 - alpha) * background
        # The camera: the frame is the scene's window at the margin plus the offset (sub-pixel).
        view = np.array([[1, 0, MARGIN + camera[i, 0]], [0, 1, MARGIN + camera[i, 1]]])
        frame = cv2.warpAffine(scene, view, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        frames.append(np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8))
    walk = camera - np.where(np.arange(num_frames)[:, None] % 2 == 1, signature, 0)
    nuisances = {
        "shape": shape,
        "half_size": float(half),
        "start": [float(x[0]), float(y[0])],
        "signature": [float(v) for v in signature],
        "walk_step": float(np.abs(np.diff(walk, axis=0)).mean()) if num_frames > 1 else 0.0,
    }
    return frames, nuisances


def generate(
    out_dir: str,
    groups: int = 9,
    clips_per_group: int = 2,
    num_frames: int = 32,
    height: int = 48,
    width: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] | None = None,
    variant: str = "walk",
) -> Path:
    """Writes the set `variant` (VARIANTS; classes: a subset of its classes, None: all) under
    out_dir (UCF101's layout, and motion_set.json) and returns out_dir as a Path."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown motion set variant {variant!r}; known: {sorted(VARIANTS)}")
    spec = VARIANTS[variant]
    classes = spec.classes if classes is None else tuple(classes)
    unknown = [c for c in classes if c not in spec.classes]
    if unknown or not classes:
        raise ValueError(f"classes must be a non-empty subset of {spec.classes}; unknown: {unknown}")
    if groups < 3:
        raise ValueError(f"groups must be at least 3 (one third is tested per split), got {groups}")
    if min(height, width) < 32 or num_frames < 2:
        raise ValueError(
            f"frames must be at least 32 pixels and videos 2 frames, got {height}x{width}x{num_frames}"
        )
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    names = {c: [] for c in classes}
    videos = {}
    for cls in classes:
        for g in range(1, groups + 1):
            for c in range(1, clips_per_group + 1):
                name = f"v_{cls}_g{g:02d}_c{c:02d}.avi"
                frames, nuisances = render_video(rng, cls, num_frames, height, width, spec)
                write_avi(root / "UCF-101" / cls / name, frames)
                names[cls].append((g, name))
                videos[name[: -len(".avi")]] = {"class": cls, "group": g, **nuisances}
    write_ucf_lists(root, list(classes), names, groups)
    about = {"variant": variant, **dataclasses.asdict(spec), "seed": seed, "videos": videos}
    (root / "motion_set.json").write_text(json.dumps(about, indent=1))
    return root


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m generated.motion_set", description=__doc__)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--variant", default="walk", choices=sorted(VARIANTS))
    p.add_argument("--groups", type=int, default=9)
    p.add_argument("--clips_per_group", type=int, default=2)
    p.add_argument("--num_frames", type=int, default=32)
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = generate(
        a.out_dir, a.groups, a.clips_per_group, a.num_frames, a.height, a.width, a.seed, variant=a.variant
    )
    count = len(VARIANTS[a.variant].classes) * a.groups * a.clips_per_group
    print(f"wrote {count} videos of the {a.variant} set under {root}")


if __name__ == "__main__":
    main()
