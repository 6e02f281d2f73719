"""Helpers shared by the tests: device parametrisation, tolerances, data and numpy references."""
from __future__ import annotations

import numpy as np
import pytest

# One tolerance table per output dtype (kornia's _DTYPE_PRECISIONS): against the numpy recipe with
# integer transforms, and against a float64 bilinear reference with angles.
EXACT_ATOL = {"uint8": 0, "float16": 0.0, "float32": 1e-6}
ANGLE_ATOL = {"uint8": 1, "float16": 2e-3, "float32": 1e-4}
TWIN_ATOL = {"uint8": 0, "float16": 0.0, "float32": 1e-6}  # CPU vs CUDA, integer transforms
TWIN_ANGLE_ATOL = {"uint8": 1, "float16": 1e-3, "float32": 1e-5}


def cpu_and_cuda() -> tuple:
    return ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))


def to_device(a: np.ndarray, device: str):
    """numpy on "cpu"; a torch CUDA tensor on "cuda"."""
    if device == "cpu":
        return a
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def to_numpy(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.cpu().numpy()


def all_colours() -> np.ndarray:
    """Every 24-bit RGB colour once: uint8 (4096, 4096, 3)."""
    c = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([c >> 16, (c >> 8) & 255, c & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)


def near_white_image(rng: np.random.Generator, height: int, width: int, fraction: float = 0.5) -> np.ndarray:
    """Random RGB where `fraction` of pixels straddle the default white bounds (V≈200, S≈30)."""
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    v = rng.integers(190, 256, (height, width, 1))
    pale = np.clip(v - rng.integers(0, 45, (height, width, 3)), 0, 255).astype(np.uint8)
    return np.where(rng.random((height, width, 1)) < fraction, pale, img)


def white_ratio_reference(region: np.ndarray, tile: int, stride: int, lower, upper) -> np.ndarray:
    """The paper's recipe per tile: cv2.cvtColor → cv2.inRange → count / tile²."""
    import cv2

    mask = cv2.inRange(cv2.cvtColor(region, cv2.COLOR_RGB2HSV), tuple(lower), tuple(upper)) > 0
    rows, cols = (region.shape[0] - tile) // stride + 1, (region.shape[1] - tile) // stride + 1
    out = np.empty((rows, cols), np.float32)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = np.count_nonzero(mask[i * stride : i * stride + tile, j * stride : j * stride + tile]) / tile**2
    return out


def augment_reference(region, origins, tile, rot90, flip, shift, mean=(0, 0, 0), std=(1, 1, 1), out_dtype="float32",
                      layout="NCHW") -> np.ndarray:
    """The numpy recipe: np.pad(reflect) → crop → np.rot90 → fliplr → (x/255 - mean)/std in float32."""
    pad = int(np.abs(shift).max(initial=0)) + 1
    padded = np.pad(region, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    shape = (len(origins), 3, tile, tile) if layout == "NCHW" else (len(origins), tile, tile, 3)
    out = np.empty(shape, out_dtype)
    for i, ((x, y), k, f, (dx, dy)) in enumerate(zip(origins, rot90, flip, shift)):
        t = np.rot90(padded[y + dy + pad : y + dy + pad + tile, x + dx + pad : x + dx + pad + tile], k)
        if f:
            t = t[:, ::-1]
        if out_dtype != "uint8":
            t = ((t.astype(np.float32) / 255 - mean) / std).astype(out_dtype, copy=False)
        out[i] = t.transpose(2, 0, 1) if layout == "NCHW" else t
    return out


def reflect(i: np.ndarray, n: int) -> np.ndarray:
    """np.pad(mode="reflect") as an index map, for any distance."""
    if n == 1:
        return np.zeros_like(i)
    i = np.mod(i, 2 * (n - 1))
    return np.where(i < n, i, 2 * (n - 1) - i)


def rotated_reference(region, origin, shift, tile, angle) -> np.ndarray:
    """A window rotated by `angle` degrees counter-clockwise about its centre, bilinear over the
    reflect-padded region, in float64: float (tile, tile, 3) in 0..255."""
    h = (tile - 1) / 2
    a = np.deg2rad(angle)
    r, c = np.mgrid[0:tile, 0:tile].astype(np.float64)
    u = h + np.cos(a) * (c - h) - np.sin(a) * (r - h)
    v = h + np.sin(a) * (c - h) + np.cos(a) * (r - h)
    fu, fv = np.floor(u), np.floor(v)
    wx, wy = (u - fu)[..., None], (v - fv)[..., None]
    x0 = origin[0] + shift[0] + fu.astype(np.int64)
    y0 = origin[1] + shift[1] + fv.astype(np.int64)
    H, W = region.shape[:2]
    img = region.astype(np.float64)

    def at(y, x):
        return img[reflect(y, H), reflect(x, W)]

    top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
    bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy


def resample_reference(region: np.ndarray, x_taps, y_taps) -> np.ndarray:
    """ops.resample's formula in int64 numpy: the taps summed down (+2^6 >> 7), then across (+2^20 >> 21)."""
    pixels = region.astype(np.int64)
    down = sum(y_taps.weights[:, k, None, None].astype(np.int64) * pixels[y_taps.first + k]
               for k in range(y_taps.weights.shape[1]))
    down = (down + 64) >> 7
    across = sum(x_taps.weights[None, :, k, None].astype(np.int64) * down[:, x_taps.first + k]
                 for k in range(x_taps.weights.shape[1]))
    return ((across + 2**20) >> 21).astype(np.uint8)


def triangle_reference(region: np.ndarray, scale: float, width: int, height: int) -> np.ndarray:
    """The view's antialiased triangle filter in float64, no rounding until the end: pixel (x, y) centred on
    ((x + ½)·scale, (y + ½)·scale), weights max(0, 1 − |d| / max(scale, 1)), taps outside renormalised."""
    def matrix(n: int, size: int) -> np.ndarray:
        r = max(scale, 1.0)
        d = np.arange(size)[None, :] + 0.5 - (np.arange(n)[:, None] + 0.5) * scale
        m = np.clip(1 - np.abs(d) / r, 0, None)
        return m / m.sum(1, keepdims=True)

    rows, cols = matrix(height, region.shape[0]), matrix(width, region.shape[1])
    out = np.einsum("vy,yxc,ux->vuc", rows, region.astype(np.float64), cols, optimize=True)
    return np.floor(out + 0.5).astype(np.uint8)
