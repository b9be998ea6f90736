"""Reading and writing mp4 frames through imageio-ffmpeg (the ffmpeg binary ships in its wheel).

The file-system edge of recorded camera data: counting a video's frames (stream copy, no
decoding), decoding chosen frames of one file in a single pass, and writing frames to a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import imageio_ffmpeg
import numpy as np
from plare_jax.errors import PlareError


class VideoError(PlareError, ValueError):
    """A video that cannot be read, or has fewer frames than asked for."""


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames in the first video stream (ffmpeg stream copy: nothing is decoded)."""
    try:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(os.fspath(path))
    except (RuntimeError, OSError) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from e
    return int(frames)


def read_frames_at(path: str | os.PathLike, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """Decodes the frames at `indices` of one video, in one pass up to the largest index.

    Args:
        path: the video file.
        indices: frame numbers (0-based, any order, repeats allowed).

    Returns:
        {index: [H, W, 3] uint8} for every distinct index.

    Raises:
        VideoError: the file is unreadable or ends before the largest index.
    """
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return {}
    if wanted[0] < 0:
        raise VideoError(f"{path}: negative frame index {wanted[0]}")
    out: dict[int, np.ndarray] = {}
    try:
        reader = imageio_ffmpeg.read_frames(os.fspath(path), pix_fmt="rgb24")
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from e
    width, height = meta["size"]
    position = 0
    try:
        targets = iter(wanted)
        target = next(targets)
        for raw in reader:
            if position == target:
                out[target] = np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy()
                target = next(targets, None)
                if target is None:
                    break
            position += 1
    finally:
        reader.close()  # stops ffmpeg; it need not decode the rest of the file
    if len(out) < len(wanted):
        raise VideoError(f"{path} ends after {position} frames; frame {wanted[-1]} was asked for")
    return out


def write_video(path: str | os.PathLike, frames: np.ndarray, *, fps: float, quality: float = 8.0) -> None:
    """Writes frames [n, H, W, 3] uint8 as an H.264 mp4 (yuv420p, so H and W must be even)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [n, H, W, 3] uint8, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even frame size, got {height}x{width}")
    writer = imageio_ffmpeg.write_frames(os.fspath(path), (width, height), fps=fps, quality=quality,
                                         codec="libx264", macro_block_size=2)
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
