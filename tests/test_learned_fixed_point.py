"""The fixed-point path: integer predictions identical across SIMD levels and threads,
and the CompressAI-shaped models (``compress`` gives what ``decompress`` returns)."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctpress.codecs.learned import ReconstructionCodec
from ctpress.frames import image_shape
from ctpress.learned import fixed_point, zoo
from ctpress.learned.layers import pad_to_multiple

SRC = Path(__file__).resolve().parents[1] / "src" / "ctpress"

#: Builds a small conv + linear network from seeded numpy weights (so every process has
#: the same float weights whatever torch's own random streams do), runs its fixed-point
#: version and prints the SHA-256 of the output bytes.
_PREDICT = """
import hashlib, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from ctpress.codecs.learned import ReconstructionCodec
rng = np.random.default_rng(5)
conv = torch.nn.Sequential(
    torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
    torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
    torch.nn.Conv2d(8, 1, 3, padding=1),
)
dense = torch.nn.Sequential(torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
with torch.no_grad():
    for p in [*conv.parameters(), *dense.parameters()]:
        p.copy_(torch.from_numpy(rng.normal(0, 0.3, p.shape).astype(np.float32)))
x = rng.uniform(0, 1, (3, 1, 24, 40))
out = ReconstructionCodec.exact_prediction(conv, x)
out2 = ReconstructionCodec.exact_prediction(dense, rng.normal(0, 1, (64, 48)))
print(hashlib.sha256(out.tobytes() + out2.tobytes()).hexdigest(), out.dtype, out.shape)
"""


def test_exact_prediction_is_identical_across_simd_levels_and_threads():
    results = {}
    for capability, threads in (("default", 1), ("avx2", 2), ("avx512", 1), ("avx512", 3)):
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS=str(threads))
        run = subprocess.run(
            [sys.executable, "-c", _PREDICT, str(threads)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[capability, threads] = run.stdout.strip()
    assert len(set(results.values())) == 1, results
    assert "int64 (3, 1, 12, 20)" in next(iter(results.values()))


def test_fixed_point_follows_the_float_model():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1)
    )
    x = torch.rand(2, 2, 9, 11, dtype=torch.float64)
    exact = ReconstructionCodec.exact_prediction(conv, x.numpy())
    reference = conv.double()(x).detach().numpy()
    assert exact.dtype == np.int64 and exact.shape == reference.shape == (2, 3, 5, 6)
    scale = 2.0**fixed_point.ACTIVATION_BITS
    assert np.abs(exact / scale - reference).max() < 1e-3
    # integers in, the same integers out
    a = fixed_point.quantise(x.numpy(), fixed_point.ACTIVATION_BITS)
    assert np.array_equal(ReconstructionCodec.exact_prediction(conv, a), exact)


def test_fixed_point_refuses_what_it_cannot_compute_exactly():
    with pytest.raises(ValueError, match="no fixed-point version"):
        fixed_point.FixedPointNet.from_module(torch.nn.Sequential(torch.nn.Tanh()))
    with pytest.raises(ValueError, match="groups=1"):
        fixed_point.FixedPointNet.from_module(torch.nn.Conv2d(2, 2, 3, groups=2))
    net = fixed_point.FixedPointNet.from_module(torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="overflow"):
        net(np.full((1, 3), 2**50, dtype=np.int64))


@pytest.mark.parametrize("method", ["hyperprior", "vqvae"])
def test_compress_gives_what_decompress_returns(method):
    """CompressAI shape: ``compress`` -> (strings, reconstruction) with the reconstruction
    the decoder gets from ``decompress(strings, shape)``, bit for bit."""
    rng = np.random.default_rng(3)
    images = np.cumsum(rng.normal(0, 1, (2, 24, 40)), axis=2)
    images = (images - images.min()) / np.ptp(images)
    for rate_point in (0, len(zoo.rate_points(method)) - 1):
        model, _ = zoo.load_model(method, rate_point)
        x = pad_to_multiple(torch.from_numpy(images[:, None]), model.downsampling)
        strings, reconstruction = model.compress(x)
        again = model.decompress(strings, (x.shape[0], x.shape[2], x.shape[3]))
        assert reconstruction.dtype == again.dtype == torch.float64
        assert reconstruction.shape == x.shape
        assert (
            hashlib.sha256(reconstruction.numpy().tobytes()).digest()
            == hashlib.sha256(again.numpy().tobytes()).digest()
        )
        assert strings.payload and strings.gain == 1.0


def _imports(path: Path) -> list[str]:
    """Absolute names of the ctpress modules a source file imports (any depth)."""
    package = list(path.relative_to(SRC.parent).parts[:-1])  # the file's package
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append(".".join([*base, node.module or ""]).rstrip("."))
            elif node.module:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name.startswith("ctpress")]


def test_import_resolution():
    names = _imports(SRC / "learned" / "zoo.py")
    assert "ctpress.errors" in names and "ctpress.learned.store" in names


def test_the_engine_imports_no_codec():
    """learned/ is the torch engine: no module of it imports ctpress.codecs."""
    offenders = {
        str(path.relative_to(SRC)): name
        for path in (SRC / "learned").rglob("*.py")
        for name in _imports(path)
        if name.startswith("ctpress.codecs")
    }
    assert offenders == {}


def test_frames_rule_is_shared():
    assert image_shape((5, 7, 9)) == (1, 35, 9) and image_shape((5, 8, 9)) == (5, 8, 9)
