"""The fidelity benchmark's generated set: 8 kinds of motion, a random look per video, a shaking camera.

    python -m generated.motion_set --out_dir=RAW [--groups=9 --clips_per_group=2]

Unlike the demo's set (generated/synthetic.py: speeds, looks shared across classes, a surface
pattern per class), the class here is the kind of an object's motion and nothing else:

  Slide   translates horizontally, left or right     Spin    rotates in place, either way
  Rise    translates upwards                          Orbit   circles a point, either way
  Fall    translates downwards                        Shake   swings left and right
  Grow    expands about its centre                    Shrink  contracts about its centre

Every label is flip-consistent: a horizontal flip (an augmentation of training) maps each class to
itself (left and right slides, clockwise and counter-clockwise spins and orbits share a class).
Everything else is a nuisance drawn per video: the background's and the object's textures and
colours, the object's shape (square or disc) and size (half side 5, 7 or 9 pixels of a 48-pixel
frame), its speed (0.8-1.2x), start and direction, and the camera, which shakes by a damped random
walk (about 0.3 pixels per frame), so every flow image also holds a global motion.

Written as UCF101's layout (RAW/UCF-101/<Class>/v_<Class>_gXX_cYY.avi and RAW/ucfTrainTestlist/,
split n testing the n-th third of the groups), so `python -m data_prep.build --dataset=ucf101`
prepares it. Groups only decide the splits: no two videos share a look.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from generated.synthetic import texture, write_avi, write_ucf_lists

CLASSES = ("Slide", "Rise", "Fall", "Grow", "Shrink", "Spin", "Orbit", "Shake")
HALF_SIZES = (5.0, 7.0, 9.0)  # the object's half side (or radius), pixels at a 48-pixel short side
SHAPES = ("square", "disc")
MARGIN = 8  # pixels of scene around the frame, for the camera's shake
TRANSLATION_SPEED = 0.75  # pixels per frame (x the video's 0.8-1.2)
SCALE_RANGE = (0.6, 1.4)  # Grow: the object's size from 0.6 to 1.4 times its half side
SPIN_SPEED = np.deg2rad(5.0)  # radians per frame
ORBIT = (9.0, 2 * np.pi / 32)  # radius (pixels), angular speed (radians per frame)
SHAKE = (5.0, 10.0)  # amplitude (pixels), period (frames)
CAMERA = (0.8, 0.3, MARGIN - 1.0)  # random walk: damping, step std (pixels), bound (pixels)


def _pose(cls: str, t: np.ndarray, num_frames: int, rng) -> tuple[np.ndarray, ...]:
    """(x, y, angle, scale) per frame, (T,) each: the object's centre relative to the scene's
    centre (pixels), its rotation (radians) and its size factor."""
    tau = t - (num_frames - 1) / 2  # centred time, so translations pass the middle of the frame
    pace = rng.uniform(0.8, 1.2)
    way = rng.choice((-1.0, 1.0))  # the direction of the flip-paired motions
    x0, y0 = rng.uniform(-4, 4, 2)
    zeros, ones = np.zeros_like(tau), np.ones_like(tau)
    x, y, angle, scale = x0 + zeros, y0 + zeros, rng.uniform(0, 2 * np.pi) + zeros, ones
    v = TRANSLATION_SPEED * pace
    if cls == "Slide":
        x = x0 + way * v * tau
    elif cls in ("Rise", "Fall"):
        y = y0 + (-1 if cls == "Rise" else 1) * v * tau
    elif cls in ("Grow", "Shrink"):
        lo, hi = SCALE_RANGE
        frac = t / max(num_frames - 1, 1)
        scale = lo + (hi - lo) * (frac if cls == "Grow" else 1 - frac)
    elif cls == "Spin":
        angle = angle + way * SPIN_SPEED * pace * t
    elif cls == "Orbit":
        radius, omega = ORBIT
        phase = rng.uniform(0, 2 * np.pi) + way * omega * pace * t
        x, y = x0 + radius * np.cos(phase), y0 + radius * np.sin(phase)
    elif cls == "Shake":
        amplitude, period = SHAKE
        x = x0 + amplitude * np.sin(2 * np.pi * t / (period / pace) + rng.uniform(0, 2 * np.pi))
    else:
        raise ValueError(f"unknown motion class {cls!r}; known: {CLASSES}")
    return x, y, angle, scale


def _camera(num_frames: int, rng) -> np.ndarray:
    """(T, 2) camera offsets (pixels): a damped random walk inside the scene's margin."""
    damping, step, bound = CAMERA
    offset, out = np.zeros(2), []
    for _ in range(num_frames):
        out.append(offset.copy())
        offset = np.clip(damping * offset + rng.normal(0, step, 2), -bound, bound)
    return np.array(out)


def _detailed_texture(rng, height, width, base):
    """A texture with fine detail over the smooth one, so that TV-L1 sees motion inside the object
    and the camera's motion on the background, not only at the object's edges."""
    fine = cv2.resize(rng.uniform(-30, 30, (height // 3, width // 3, 3)), (width, height))
    return np.clip(texture(rng, height, width, base) + fine, 0, 255)


def render_video(rng, cls: str, num_frames: int, height: int, width: int) -> list[np.ndarray]:
    """Frames (num_frames, H, W, 3) uint8 BGR of one video of class `cls` with its own look."""
    scene_h, scene_w = height + 2 * MARGIN, width + 2 * MARGIN
    background = _detailed_texture(rng, scene_h, scene_w, rng.uniform(40, 215, 3)).astype(np.float32)
    side = 64  # the object's texture, larger than its largest rendering
    obj = _detailed_texture(rng, side, side, rng.uniform(40, 215, 3)).astype(np.float32)
    half = rng.choice(HALF_SIZES) * min(height, width) / 48
    yy, xx = np.mgrid[0:side, 0:side] - (side - 1) / 2
    if rng.choice(SHAPES) == "square":
        mask = ((np.abs(xx) <= half) & (np.abs(yy) <= half)).astype(np.float32)
    else:
        mask = (np.hypot(xx, yy) <= half).astype(np.float32)
    t = np.arange(num_frames, dtype=np.float64)
    x, y, angle, scale = _pose(cls, t, num_frames, rng)
    camera = _camera(num_frames, rng)
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
    return frames


def generate(
    out_dir: str,
    groups: int = 9,
    clips_per_group: int = 2,
    num_frames: int = 32,
    height: int = 48,
    width: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
) -> Path:
    """Writes the set under out_dir (UCF101's layout) and returns out_dir as a Path."""
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes must be a non-empty subset of {CLASSES}; unknown: {unknown}")
    if groups < 3:
        raise ValueError(f"groups must be at least 3 (one third is tested per split), got {groups}")
    if min(height, width) < 32 or num_frames < 2:
        raise ValueError(
            f"frames must be at least 32 pixels and videos 2 frames, got {height}x{width}x{num_frames}"
        )
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    names = {c: [] for c in classes}
    for cls in classes:
        for g in range(1, groups + 1):
            for c in range(1, clips_per_group + 1):
                name = f"v_{cls}_g{g:02d}_c{c:02d}.avi"
                write_avi(root / "UCF-101" / cls / name, render_video(rng, cls, num_frames, height, width))
                names[cls].append((g, name))
    write_ucf_lists(root, list(classes), names, groups)
    return root


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m generated.motion_set", description=__doc__)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--groups", type=int, default=9)
    p.add_argument("--clips_per_group", type=int, default=2)
    p.add_argument("--num_frames", type=int, default=32)
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = generate(a.out_dir, a.groups, a.clips_per_group, a.num_frames, a.height, a.width, a.seed)
    print(f"wrote {len(CLASSES) * a.groups * a.clips_per_group} videos under {root}")


if __name__ == "__main__":
    main()
