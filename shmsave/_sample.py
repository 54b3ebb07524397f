"""Sample image stacks with realistic content, for the demo, tests and benchmarks.

python -m shmsave._sample OUT.npy [--count N] [--height H] [--width W]
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def frames(count: int, height: int = 240, width: int = 320, channels: int = 3, seed: int = 0) -> np.ndarray:
    """``count`` uint8 frames of a moving gradient with shapes and mild noise (compresses like video)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    stack = np.empty((count, height, width, channels), np.uint8)
    for i in range(count):
        phase = 2 * np.pi * i / max(count, 1)
        base = 128 + 60 * np.sin(x / width * 6 + phase) * np.cos(y / height * 4 - phase)
        cx, cy = width * (0.5 + 0.3 * np.cos(phase)), height * (0.5 + 0.3 * np.sin(phase))
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < (min(height, width) / 6) ** 2
        for c in range(channels):
            plane = base + 40 * c + rng.normal(0, 6, base.shape)
            plane[disc] = 230 - 70 * c
            stack[i, :, :, c] = np.clip(plane, 0, 255)
    return stack


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a sample .npy stack of video-like frames.")
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    stack = frames(args.count, args.height, args.width)
    np.save(args.out, stack)
    print(f"wrote {args.out}: {stack.shape} {stack.dtype}, {stack.nbytes / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
