"""Shared test data: small synthetic projection stacks with realistic structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def damage_chunk(path: Path, index: int) -> None:
    """Flip one bit in the middle of chunk ``index`` of the .ctpz file at ``path``."""
    import ctpress

    with ctpress.open(path) as f:
        chunk = f.chunks[index]
    raw = bytearray(path.read_bytes())
    raw[chunk.offset + chunk.length // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def smooth_stack(shape: tuple[int, int, int], seed: int = 0, noise: float = 20.0) -> np.ndarray:
    """Float64 sinogram-like stack: smooth object profiles over the views plus noise."""
    rng = np.random.default_rng(seed)
    n, rows, cols = shape
    view = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None, None]
    row = np.linspace(-1, 1, rows)[None, :, None]
    col = np.linspace(-1, 1, cols)[None, None, :]
    centre = 0.3 * np.sin(view)
    body = np.clip(1 - ((col - centre) / 0.8) ** 2 - 0.2 * row**2, 0, None)
    return 30000 * np.sqrt(body) + 2000 + rng.normal(0, noise, shape)


@pytest.fixture
def uint16_stack() -> np.ndarray:
    """(24, 16, 96) uint16 with the dtype's edge values 0 and 65535 present."""
    x = np.clip(smooth_stack((24, 16, 96)), 0, 65535).astype(np.uint16)
    x[0, 0, 0], x[-1, -1, -1] = 0, 65535
    return x


@pytest.fixture
def float32_stack() -> np.ndarray:
    """(24, 16, 96) float32 line-integral-like values (about 0..8)."""
    return (smooth_stack((24, 16, 96), seed=1) / 4096).astype(np.float32)


@pytest.fixture
def int16_stack() -> np.ndarray:
    """(20, 1, 128) int16 sinogram (rows=1) spanning negative values, with int16 extremes."""
    x = np.clip(smooth_stack((20, 1, 128), seed=2) - 16000, -32768, 32767).astype(np.int16)
    x[0, 0, 0], x[-1, 0, -1] = -32768, 32767
    return x
