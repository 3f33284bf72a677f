"""A learned stream decodes identically everywhere, or fails loudly.

Thread counts, separate processes, weights perturbed by one ulp, and weights that differ
from the ones a file was made with.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import smooth_stack
from ctpress.codecs import get_codec
from ctpress.codecs.framing import parse_chunk_header
from ctpress.codecs.learned import decode_learned
from ctpress.errors import CorruptFileError, CtpressError
from ctpress.learned import zoo

METHODS = ("hyperprior", "vqvae")
RATES = (("psnr", 45.0), ("max_error", 40.0))


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return np.clip(smooth_stack((4, 32, 80), seed=5), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def chunks(stack) -> dict[tuple[str, str], bytes]:
    """Chunks encoded with 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            (method, mode): get_codec(method, mode=mode, value=value).encode(stack)
            for method in METHODS
            for mode, value in RATES
        }
    finally:
        torch.set_num_threads(threads)


def _inner(chunk: bytes) -> bytes:
    """The codec stream of a chunk (after its header, binary or JSON)."""
    return chunk[parse_chunk_header(chunk)[1] :]


def _decode(method: str, chunk: bytes, threads: int) -> np.ndarray:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return get_codec(method).decode(chunk)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("method", METHODS)
def test_thread_count_does_not_change_decoding(method, stack, chunks):
    for mode, _ in RATES:
        chunk = chunks[method, mode]
        two = _decode(method, chunk, 2)
        one = _decode(method, chunk, 1)
        assert np.array_equal(one, two)
        # and the reverse: encoded with 2 threads, decoded with 1, same bytes
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            value = dict(RATES)[mode]
            again = get_codec(method, mode=mode, value=value).encode(stack)
        finally:
            torch.set_num_threads(before)
        assert again == chunk
        assert np.array_equal(_decode(method, again, 1), one)


_ENCODER = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from ctpress.codecs import get_codec
x = np.load(sys.argv[1])
for i, (m, mode, v) in enumerate([(m, mode, float(v)) for m, mode, v in
                                  (a.split(':') for a in sys.argv[3:])]):
    open(f"{sys.argv[2]}.{i}", "wb").write(get_codec(m, mode=mode, value=v).encode(x))
"""
_DECODER = """
import sys, numpy as np, torch
torch.set_num_threads(2)
from ctpress.codecs import get_codec
for i, m in enumerate(sys.argv[2:]):
    np.save(f"{sys.argv[1]}.{i}.npy", get_codec(m).decode(open(f"{sys.argv[1]}.{i}", "rb").read()))
"""


def _run(code: str, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env, timeout=300)


def test_encode_and_decode_in_separate_processes(tmp_path, stack, chunks):
    np.save(tmp_path / "x.npy", stack)
    jobs = [(m, mode, v) for m in METHODS for mode, v in RATES]
    _run(
        _ENCODER,
        str(tmp_path / "x.npy"),
        str(tmp_path / "c"),
        *(f"{m}:{o}:{v}" for m, o, v in jobs),
    )
    _run(_DECODER, str(tmp_path / "c"), *(m for m, _, _ in jobs))
    for i, (method, mode, _) in enumerate(jobs):
        encoded = (tmp_path / f"c.{i}").read_bytes()
        assert encoded == chunks[method, mode]  # same bytes from another process
        decoded = np.load(tmp_path / f"c.{i}.npy")
        assert np.array_equal(decoded, _decode(method, encoded, 1))


def _perturbed(method: str, rate_point: int) -> zoo.LearnedModel:
    """A fresh copy of a zoo model with every float weight moved by one ulp."""
    entry = zoo.rate_points(method)[rate_point]
    model, _ = zoo.load_weights((zoo.weights_dir() / entry["file"]).read_bytes())
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.from_numpy(np.nextafter(tensor.numpy(), np.inf)))
    return model


@pytest.mark.parametrize("method", METHODS)
def test_weights_one_ulp_away_decode_exactly_or_fail_loudly(method, stack, chunks):
    for mode, _ in RATES:
        chunk = chunks[method, mode]
        stream = _inner(chunk)
        rate_point = stream[5]
        model = _perturbed(method, rate_point)
        sha = zoo.rate_points(method)[rate_point]["sha256"]
        reference = _decode(method, chunk, 1)

        def loader(m: str, r: int, model=model, sha=sha) -> tuple[zoo.LearnedModel, str]:
            return model, sha  # bypasses the weights check: exercises the arithmetic guards

        try:
            values = decode_learned(method, stream, stack.shape, "float64", loader)
        except CorruptFileError as exc:
            assert "mismatch" in str(exc)
        else:
            decoded = np.clip(np.rint(values), stack.min(), stack.max()).astype(stack.dtype)
            assert np.array_equal(decoded, reference)


def _zoo_copy(tmp_path: Path) -> Path:
    target = tmp_path / "weights"
    shutil.copytree(zoo.weights_dir(), target)
    return target


def test_stream_made_with_other_weights_is_refused(tmp_path, monkeypatch, chunks):
    target = _zoo_copy(tmp_path)
    method = "hyperprior"
    chunk = chunks[method, "psnr"]
    rate_point = _inner(chunk)[5]
    entry = zoo.rate_points(method)[rate_point]
    model = _perturbed(method, rate_point)
    sha = zoo.save_weights(model, target / entry["file"], {})
    manifest = json.loads((target / zoo.MANIFEST).read_text())
    manifest["methods"][method][rate_point]["sha256"] = sha
    (target / zoo.MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setenv(zoo.ENV_DIR, str(target))
    zoo.clear_cache()
    try:
        with pytest.raises(CtpressError, match=r"file was made with .* weights"):
            get_codec(method).decode(chunk)
    finally:
        monkeypatch.delenv(zoo.ENV_DIR)
        zoo.clear_cache()


def test_damaged_weights_file_is_refused(tmp_path, monkeypatch, chunks):
    target = _zoo_copy(tmp_path)
    chunk = chunks["vqvae", "psnr"]
    entry = zoo.rate_points("vqvae")[_inner(chunk)[5]]
    data = bytearray((target / entry["file"]).read_bytes())
    data[-1] ^= 1
    (target / entry["file"]).write_bytes(bytes(data))
    monkeypatch.setenv(zoo.ENV_DIR, str(target))
    zoo.clear_cache()
    try:
        with pytest.raises(CorruptFileError, match="installation is damaged"):
            get_codec("vqvae").decode(chunk)
    finally:
        monkeypatch.delenv(zoo.ENV_DIR)
        zoo.clear_cache()
