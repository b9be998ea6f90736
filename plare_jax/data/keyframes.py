"""Keyframes of a segment and the captioned strip a labeler sees (numpy + Pillow, no simulator).

Shared by the MetaWorld path (frames re-rendered from simulator states) and the recorded-data
path (frames read from stored arrays or videos), so both show a labeler the same picture: the T
steps of a segment are subsampled to 8 evenly spaced frames (round(linspace(0, T-1, 8))), and k
of those 8 are kept, evenly spaced again (for T=64 and k=3: steps 0, 36, 63), tiled left to right
with a caption "Timestep i" each.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SUBSAMPLED_FRAMES = 8


def keyframe_offsets(segment_length: int, num_keyframes: int) -> np.ndarray:
    """Steps within a segment shown as keyframes.

    Returns:
        [k] int64 offsets in 0..T-1; for T=64, k=3: [0, 36, 63].
    """
    if segment_length < 1 or num_keyframes < 1:
        raise ValueError(f"need segment_length >= 1 and num_keyframes >= 1, got {segment_length}, {num_keyframes}")
    sub = np.round(np.linspace(0, segment_length - 1, SUBSAMPLED_FRAMES)).astype(np.int64)
    if num_keyframes > SUBSAMPLED_FRAMES:
        return np.round(np.linspace(0, segment_length - 1, num_keyframes)).astype(np.int64)
    return sub[np.round(np.linspace(0, SUBSAMPLED_FRAMES - 1, num_keyframes)).astype(np.int64)]


def tile_keyframes(frames: np.ndarray, *, captions: bool = True) -> np.ndarray:
    """Tiles frames [k, H, W, 3] left to right into [H, W*k, 3], captioned "Timestep i"."""
    k, h, w, _ = frames.shape
    tiled = np.concatenate(list(frames), axis=1)
    if not captions:
        return tiled
    image = Image.fromarray(tiled)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, h // 14))
    for i in range(k):
        text = f"Timestep {i}"
        x, y = i * w + 4, 3
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(255, 255, 255))
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an image [H, W, 3] uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] uint8 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
