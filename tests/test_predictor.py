"""The ConvLSTM view predictor's integer inference (ctpress.learned.predictor): identical
integers across processes, thread counts and ATEN_CPU_CAPABILITY, no torch at import,
exact float64 GEMMs, stored normalisation checked, and close to the trained float model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ctpress
from ctpress.learned import fixed_point
from ctpress.learned.predictor import (
    LOG_SCALE_RANGE,
    PRED_FRAC_BITS,
    Normalisation,
    ViewPredictor,
    chunk_normalisation,
    float_inputs,
)

#: Predicts a fixed sequence of views and prints the SHA-256 of the outputs and whether
#: torch got imported.
_DIGEST = """
import hashlib, json, sys
import numpy as np
from ctpress.learned.predictor import ViewPredictor
rng = np.random.default_rng(5)
level = 3000 + 2000 * np.sin(np.linspace(0, 3, 40))[None, :]
views = [rng.poisson(level * (1 + 0.05 * t)).astype(np.uint16).reshape(1, 40) for t in range(6)]
views = [np.repeat(v, 12, axis=0) for v in views]
predictor = ViewPredictor.load()
sequence = predictor.sequence(12, 40, predictor.normalisation(np.stack(views)))
digest = hashlib.sha256()
for view in views:
    for output in sequence.next(view):
        digest.update(output.astype("<i8").tobytes())
print(json.dumps([digest.hexdigest(), "torch" in sys.modules]))
"""


def _run(code: str, **env: str) -> list[object]:
    package_root = str(Path(ctpress.__file__).resolve().parents[1])
    environment = {**os.environ, **env}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")])
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def _sequence_views(n_views: int = 6, rows: int = 10, cols: int = 24) -> np.ndarray:
    """Poisson counts of a slowly moving profile (n_views, rows, cols) uint16."""
    rng = np.random.default_rng(3)
    c = np.arange(cols)[None, None, :]
    t = np.arange(n_views)[:, None, None]
    r = np.arange(rows)[None, :, None]
    level = 20000 * np.exp(-(((c - 10 - t) / 6.0) ** 2)) + 3000 + 100 * r
    return rng.poisson(level).astype(np.uint16)


def test_identical_across_processes_threads_and_instruction_sets() -> None:
    runs = [
        _run(_DIGEST, ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"),
        _run(_DIGEST, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2"),
    ]
    assert runs[0] == runs[1]
    assert runs[0][1] is False  # no torch imported on the coding path


def test_exact_matmul_is_exact_up_to_the_bound_and_refuses_beyond() -> None:
    rng = np.random.default_rng(0)
    weight = rng.integers(-(2**20), 2**20, (4, 64))
    columns = rng.integers(-(2**24), 2**24, (64, 300))
    assert fixed_point.accumulator_bound(weight, 2**24) < fixed_point.EXACT_FLOAT_LIMIT
    exact = fixed_point.exact_matmul(weight, columns)
    np.testing.assert_array_equal(exact.astype(np.int64), weight @ columns)
    with pytest.raises(ValueError, match="exact float64"):
        fixed_point.exact_matmul(weight, columns * 2**20)
    with pytest.raises(ValueError, match="exact float64"):
        fixed_point.exact_matmul(weight, columns, largest_column=2**40)


@pytest.mark.parametrize(
    "norm",
    [
        (2**31, 10, 3),
        (2**31 - 1, 33, 3),
        (0, 1, 3),
        (0, 34, 3),
        (0, 10, -1),
        (0, 10, 25),
        (0, 10),
        (-1, 10, 3),
    ],
)
def test_normalisation_out_of_range_is_refused(norm: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="normalisation"):
        ViewPredictor.load().sequence(4, 4, norm)


@pytest.mark.parametrize(
    "chunk",
    [
        _sequence_views(),
        np.array([[[0, 65535], [65535, 0]]] * 3, dtype=np.uint16),
        np.array([[[-(2**31), 2**31 - 1]], [[5, -7]]], dtype=np.int32),
        np.full((1, 2, 2), -(2**31), dtype=np.int32),
    ],
)
def test_normalisation_covers_the_chunk(chunk: np.ndarray) -> None:
    norm_ints = chunk_normalisation(chunk)
    assert all(0 <= v < 2**31 for v in norm_ints)
    norm = Normalisation.decode(norm_ints)
    level = (chunk.astype(np.int64) - norm.offset) / 2.0**norm.level_shift
    assert level.min() >= 0 and level.max() < 2


def test_predictions_have_the_documented_units_and_range() -> None:
    views = _sequence_views(rows=3)
    predictor = ViewPredictor.load()
    sequence = predictor.sequence(3, 24, predictor.normalisation(views))
    for t in range(len(views) - 1):
        prediction, log_scale = sequence.next(views[t])
        assert prediction.dtype == np.int64 and prediction.shape == (3, 24)
        assert log_scale.min() >= LOG_SCALE_RANGE[0] and log_scale.max() <= LOG_SCALE_RANGE[1]
        error = np.abs(views[t + 1] - prediction / 2**PRED_FRAC_BITS)
        previous_error = np.abs(views[t + 1].astype(np.int64) - views[t])
        assert error.mean() < 3 * previous_error.mean() + 10
    with pytest.raises(ValueError, match="shape"):
        sequence.next(views[0][:2])


def test_float_and_integer_models_agree() -> None:
    import torch

    from ctpress.learned import store
    from ctpress.learned.models.view_predictor import load_view_predictor

    entry = store.entries(str(store.weights_dir()), "convlstm")[0]
    model = load_view_predictor((store.weights_dir() / entry["file"]).read_bytes())
    views = _sequence_views()
    predictor = ViewPredictor.load()
    norm_ints = predictor.normalisation(views)
    norm = Normalisation.decode(norm_ints)
    sequence = predictor.sequence(*views.shape[1:], norm_ints)
    integer = np.stack([sequence.next(v)[0] for v in views[:-1]]) / 2**PRED_FRAC_BITS
    with torch.no_grad():
        inputs = torch.from_numpy(float_inputs(views, norm)[None, :-1])
        condition = torch.tensor([norm.condition], dtype=torch.float64)
        correction = model.double()(inputs, condition)[0][0].numpy()
    floating = views[:-1] + correction * 2.0**norm.diff_shift
    # within a few percent of the prediction's unit (the typical view-to-view difference)
    assert np.abs(integer - floating).max() < 0.05 * 2**norm.diff_shift
