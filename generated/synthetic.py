"""A small synthetic video set in the UCF101 layout, for the demo and the tests.

    python -m generated.synthetic --out_dir=RAW [--num_classes=6 --groups=9 --clips_per_group=2]

Each class is a kind of motion (a textured object moving right, left, up, down, growing or
shrinking over a textured background); appearance is random per group, so that, as in UCF101, the
clips of one group share their look and only motion tells the classes apart.

`--kind=speed` makes the classes speeds instead (slow, steady, quick, fast) with a heading drawn
anew every 8 frames: a flow image's colour (its direction) then says nothing of the class, so
untrained features do poorly while features learned from temporal positives (clips of one video
at different times share the speed, not the heading) do well. `--shared_looks` draws each group's
look once for every class (group g of each class is one setting, as KTH's actors perform every
action; speed squares then also have one size), so a look tells videos apart but never their
class. `--patterns` (speed classes only) also marks each class's square with a surface pattern
(plain, checker, dots, fine grain) over the look's texture, as actions come with their objects:
the class then shows in appearance as well as in motion, but in a small part of the frame, so
untrained RGB features, dominated by the look, miss it while learned ones find it. The demo uses
all three.

`--kind=pattern` makes the classes the square's surface pattern alone (the four PATTERNS on a grey
square), the square moving at a speed drawn per clip from SPEEDS, while the camera pans over one
wide colourful background shared by every video: a video's look changes from frame to frame and
its pattern does not. Untrained RGB features, dominated by the background, tell the classes
apart little better than chance; features learned from temporal positives (two times of one
video share the pattern, not the background) find the pattern. It is the RGB view's
learned-vs-random check (tests/test_evaluation.py). Its flow says nothing of the class (any
speed, any heading, over a moving background): the set is for the RGB view.

Written as MJPG AVIs under RAW/UCF-101/<Class>/v_<Class>_gXX_cYY.avi with RAW/ucfTrainTestlist/
(classInd.txt and train/test lists of splits 1-3; split n tests on the n-th third of the
groups), so the real `python -m data_prep.build --dataset=ucf101` prepares it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

# name -> (vx, vy, growth per frame); speeds in pixels per frame.
MOTIONS = {
    "MoveRight": (2.0, 0.0, 0.0),
    "MoveLeft": (-2.0, 0.0, 0.0),
    "MoveUp": (0.0, -2.0, 0.0),
    "MoveDown": (0.0, 2.0, 0.0),
    "Grow": (0.0, 0.0, 0.6),
    "Shrink": (0.0, 0.0, -0.6),
}


def texture(rng, height, width, base):
    """Smooth random colour texture around `base` colour: (H, W, 3) float in [0, 255]."""
    small = rng.uniform(-60, 60, (max(2, height // 8), max(2, width // 8), 3))
    tex = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(tex + base, 0, 255)


def render_clip(rng, motion, appearance, num_frames, height, width):
    """Frames (num_frames, H, W, 3) uint8 BGR of one clip."""
    vx, vy, growth = motion
    background, obj_tex = appearance
    jitter = rng.uniform(0.8, 1.2)
    half = rng.uniform(0.18, 0.25) * min(height, width)
    cx = rng.uniform(0.3, 0.7) * width - vx * jitter * num_frames / 2
    cy = rng.uniform(0.3, 0.7) * height - vy * jitter * num_frames / 2
    if growth < 0:
        half += -growth * jitter * num_frames * 0.8
    frames = []
    yy, xx = np.mgrid[0:height, 0:width]
    for t in range(num_frames):
        x, y = cx + vx * jitter * t, cy + vy * jitter * t
        r = max(3.0, half + growth * jitter * t)
        inside = (np.abs(xx - x) < r) & (np.abs(yy - y) < r)
        # The object's texture moves with it, so flow inside it is the object's motion.
        shifted = np.roll(obj_tex, (int(round(y)), int(round(x))), axis=(0, 1))
        frame = np.where(inside[..., None], shifted, background)
        frames.append(np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8))
    return frames


# name -> speed in pixels per frame; the heading is redrawn every HEADING_SEGMENT frames.
SPEEDS = {"Slow": 0.7, "Steady": 1.5, "Quick": 2.3, "Fast": 3.1}
HEADING_SEGMENT = 8


# Surface patterns of the speed classes (--patterns), in class order; amplitude in grey levels.
PATTERNS = ("plain", "checker", "dots", "grain")
PATTERN_AMPLITUDE = 60.0


def surface_pattern(name: str, height: int, width: int, rng) -> np.ndarray:
    """(H, W) float in [-1, 1]: a class's mark, added to its square's texture (and moving with it).
    All but 'plain' vary in both directions, so TV-L1 sees their motion in every heading."""
    yy, xx = np.mgrid[0:height, 0:width]
    if name == "plain":
        return np.zeros((height, width))
    if name == "checker":  # 4-pixel squares
        return np.where((xx // 4 + yy // 4) % 2 == 0, 1.0, -1.0)
    if name == "dots":  # 3-pixel dots every 8 pixels
        return np.where((xx % 8 < 3) & (yy % 8 < 3), 1.0, -0.4)
    if name == "grain":  # random 2-pixel blocks, drawn once for the whole set
        blocks = np.sign(rng.uniform(-1, 1, (height // 2 + 1, width // 2 + 1)))
        return np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)[:height, :width]
    raise ValueError(f"unknown pattern {name!r}; known: {PATTERNS}")


def render_speed_clip(rng, speed, appearance, num_frames, height, width, half_size=None, pattern=None):
    """Frames (num_frames, H, W, 3) uint8 BGR: a textured square moving at `speed` in a heading
    drawn anew every HEADING_SEGMENT frames, bouncing off the frame's edges. half_size: the
    square's half side as a fraction of the short side (None: drawn per clip in 0.18-0.25).
    pattern: (H, W) in [-1, 1] added to the square's texture (x PATTERN_AMPLITUDE), or None."""
    background, obj_tex = appearance
    if pattern is not None:
        obj_tex = np.clip(obj_tex + PATTERN_AMPLITUDE * pattern[..., None], 0, 255)
    half = (rng.uniform(0.18, 0.25) if half_size is None else half_size) * min(height, width)
    return _moving_square(rng, speed, obj_tex, lambda t: background, half, num_frames, height, width)


def _moving_square(rng, speed, obj_tex, background_at, half, num_frames, height, width):
    """Frames (num_frames, H, W, 3) uint8 BGR: a square of half side `half` pixels, its texture
    obj_tex (H, W, 3) moving with it, at `speed` in a heading drawn anew every HEADING_SEGMENT
    frames, bouncing off the frame's edges, over background_at(t) (H, W, 3); noise of 2 levels."""
    x, y = rng.uniform(half, width - half), rng.uniform(half, height - half)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(num_frames):
        if t % HEADING_SEGMENT == 0:
            angle = rng.uniform(0, 2 * np.pi)
            vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        inside = (np.abs(xx - x) < half) & (np.abs(yy - y) < half)
        shifted = np.roll(obj_tex, (int(round(y)), int(round(x))), axis=(0, 1))
        frame = np.where(inside[..., None], shifted, background_at(t))
        frames.append(np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8))
        if not half <= x + vx <= width - half:
            vx = -vx
        if not half <= y + vy <= height - half:
            vy = -vy
        x, y = x + vx, y + vy
    return frames


# kind 'pattern': the class names (PATTERNS in order), the panning camera's speed in pixels per
# frame, and the shared background's size in frames and its colour blobs' size in pixels.
PATTERN_CLASSES = ("Plain", "Checker", "Dots", "Grain")
PAN_SPEED = 3.0
WORLD_FRAMES = 4
WORLD_BLOB = 12


def pattern_world(rng, height: int, width: int) -> np.ndarray:
    """(WORLD_FRAMES * H, WORLD_FRAMES * W, 3) float: the background every 'pattern' video pans over,
    smooth blobs of saturated random colours, so a look changes as the camera moves."""
    h, w = WORLD_FRAMES * height, WORLD_FRAMES * width
    small = rng.uniform(20, 235, (h // WORLD_BLOB, w // WORLD_BLOB, 3))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def render_pattern_clip(rng, world, pattern, num_frames, height, width, half_size):
    """Frames (num_frames, H, W, 3) uint8 BGR of kind 'pattern': a grey square carrying `pattern`
    ((H, W) in [-1, 1]) moves as render_speed_clip's at a speed drawn from SPEEDS, in front of
    `world` seen through a window panning PAN_SPEED pixels per frame from a random start in a random
    heading (wrapping around). half_size: the square's half side as a fraction of the short side."""
    grey = 0.3 * texture(rng, height, width, 128.0) + 0.7 * 128.0
    obj_tex = np.clip(grey + PATTERN_AMPLITUDE * pattern[..., None], 0, 255)
    speed = rng.choice(list(SPEEDS.values()))
    world_h, world_w = world.shape[:2]
    ox, oy = rng.uniform(0, world_w), rng.uniform(0, world_h)
    heading = rng.uniform(0, 2 * np.pi)
    pan_x, pan_y = PAN_SPEED * np.cos(heading), PAN_SPEED * np.sin(heading)

    def background_at(t):
        shift = (-int(round(oy + pan_y * t)), -int(round(ox + pan_x * t)))
        return np.roll(world, shift, axis=(0, 1))[:height, :width]

    half = half_size * min(height, width)
    return _moving_square(rng, speed, obj_tex, background_at, half, num_frames, height, width)


def write_avi(path: Path, frames, fps: float = 25.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG AVI files ({path})")
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_groups(split: int, num_groups: int) -> set[int]:
    """Groups (1-based) tested in `split` (1..3): the split-th third of the groups."""
    return {g for g in range(1, num_groups + 1) if (g - 1) * 3 // num_groups == split - 1}


def write_ucf_lists(root: Path, classes: list[str], names: dict, groups: int) -> None:
    """UCF101's list files under root/ucfTrainTestlist: classInd.txt and the train/test lists of
    splits 1-3. names: {class: [(group, file name), ...]}."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    for split in (1, 2, 3):
        tested = test_groups(split, groups)
        train = [f"{c}/{n} {i + 1}\n" for i, c in enumerate(classes) for g, n in names[c] if g not in tested]
        test = [f"{c}/{n}\n" for c in classes for g, n in names[c] if g in tested]
        (lists / f"trainlist{split:02d}.txt").write_text("".join(train))
        (lists / f"testlist{split:02d}.txt").write_text("".join(test))


def generate(
    out_dir: str,
    num_classes: int = 6,
    groups: int = 9,
    clips_per_group: int = 2,
    num_frames: int = 40,
    height: int = 64,
    width: int = 80,
    seed: int = 0,
    kind: str = "direction",
    shared_looks: bool = False,
    patterns: bool = False,
    square_size: float = 0.22,
) -> Path:
    """Writes the set under out_dir and returns out_dir as a Path.

    kind: 'direction' (the classes of MOTIONS), 'speed' (the classes of SPEEDS: speed is the
    class, the heading changes every 8 frames, so the flow's direction says nothing of it) or
    'pattern' (the classes of PATTERN_CLASSES: the square's surface pattern is the class, the
    camera pans over one shared background; looks and patterns are given, so shared_looks and
    patterns do not apply).
    shared_looks: each group's look is drawn once and used by every class (and speed squares have
    one size), so appearance never tells the class; otherwise each (class, group) has its own.
    patterns: (kind 'speed') each class's square also carries its surface pattern (PATTERNS).
    square_size: with shared_looks or kind 'pattern', the square's half side as a fraction of the
    frame's short side.
    """
    table = {"direction": MOTIONS, "speed": SPEEDS, "pattern": PATTERN_CLASSES}.get(kind)
    if table is None:
        raise ValueError(f"kind must be 'direction', 'speed' or 'pattern', got {kind!r}")
    if not 1 <= num_classes <= len(table):
        raise ValueError(f"num_classes must be in 1..{len(table)} for kind {kind!r}, got {num_classes}")
    if kind == "pattern" and (shared_looks or patterns):
        raise ValueError(
            "kind 'pattern' has its patterns and one shared background; drop shared_looks and patterns"
        )
    if patterns and kind != "speed":
        raise ValueError(f"patterns mark the speed classes; use kind='speed' (got {kind!r})")
    if not 0.05 <= square_size <= 0.45:
        raise ValueError(f"square_size must be in [0.05, 0.45] of the short side, got {square_size}")
    if groups < 3:
        raise ValueError(f"groups must be at least 3 (one third is tested per split), got {groups}")
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    classes = list(table)[:num_classes]
    names = {c: [] for c in classes}

    def look():
        return (
            texture(rng, height, width, rng.uniform(40, 215, 3)),
            texture(rng, height, width, rng.uniform(40, 215, 3)),
        )

    # Shared looks: group g of every class is filmed in one setting, so the look tells instances
    # apart but never the class; one square size, since a per-clip size would be a second cue
    # besides the speed that tells the clips of one look apart.
    shared = {g: look() for g in range(1, groups + 1)} if shared_looks else {}
    half_size = square_size if shared_looks else None
    # The marks draw from their own generator, so the clips' draws match a set without them.
    mark_rng = np.random.default_rng(seed + 1)
    marks = {c: surface_pattern(PATTERNS[i], height, width, mark_rng) for i, c in enumerate(classes)}
    marks = marks if patterns or kind == "pattern" else {}
    world = pattern_world(rng, height, width) if kind == "pattern" else None

    def render(cls, appearance):
        if kind == "direction":
            return render_clip(rng, MOTIONS[cls], appearance, num_frames, height, width)
        if kind == "speed":
            return render_speed_clip(
                rng, SPEEDS[cls], appearance, num_frames, height, width, half_size, marks.get(cls)
            )
        return render_pattern_clip(rng, world, marks[cls], num_frames, height, width, square_size)

    for cls in classes:
        for g in range(1, groups + 1):
            appearance = None if kind == "pattern" else (shared[g] if shared_looks else look())
            for c in range(1, clips_per_group + 1):
                name = f"v_{cls}_g{g:02d}_c{c:02d}.avi"
                write_avi(root / "UCF-101" / cls / name, render(cls, appearance))
                names[cls].append((g, name))
    write_ucf_lists(root, classes, names, groups)
    return root


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m generated.synthetic", description=__doc__)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--num_classes", type=int, default=6)
    p.add_argument("--groups", type=int, default=9)
    p.add_argument("--clips_per_group", type=int, default=2)
    p.add_argument("--num_frames", type=int, default=40)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=("direction", "speed", "pattern"), default="direction")
    p.add_argument("--shared_looks", action="store_true", help="one look per group for every class")
    p.add_argument("--patterns", action="store_true", help="speed classes: a surface pattern per class")
    p.add_argument(
        "--square_size", type=float, default=0.22, help="shared looks or kind pattern: half side / short side"
    )
    a = p.parse_args(argv)
    root = generate(
        a.out_dir,
        a.num_classes,
        a.groups,
        a.clips_per_group,
        a.num_frames,
        a.height,
        a.width,
        a.seed,
        a.kind,
        a.shared_looks,
        a.patterns,
        a.square_size,
    )
    print(f"wrote {a.num_classes * a.groups * a.clips_per_group} videos under {root}")


if __name__ == "__main__":
    main()
