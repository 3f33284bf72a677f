"""sparse-unet: view selection, exact value domain, container flags, determinism, damage,
restoration (b), and a tiny U-Net that beats linear interpolation on a phantom it never saw."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ctpress
from conftest import damage_chunk
from ctpress.cli import main
from ctpress.codecs import get_codec
from ctpress.container.writer import chunk_contexts
from ctpress.errors import CorruptFileError, InputError
from ctpress.learned import conjugate, sparse, store
from ctpress.learned.store import WeightsMismatchError
from ctpress.sim import simulate_scan


@pytest.fixture(scope="module")
def fan_scan() -> ctpress.Scan:
    """A small fan-beam scan of the embedded volume (line integrals, uint16)."""
    return simulate_scan(None, geometry_kind="fan", n_views=96, det_rows=2, det_cols=64, i0=1e5)


@pytest.fixture(scope="module")
def count_scan() -> ctpress.Scan:
    return simulate_scan(
        None, geometry_kind="fan", n_views=64, det_rows=2, det_cols=48, i0=2e4, dtype="counts"
    )


def test_stored_views_are_every_kth_and_the_last() -> None:
    np.testing.assert_array_equal(sparse.stored_views(10, 4), [0, 4, 8, 9])
    np.testing.assert_array_equal(sparse.stored_views(9, 4), [0, 4, 8])
    np.testing.assert_array_equal(sparse.stored_views(1, 16), [0])
    a, b, offset = sparse.view_positions(10, sparse.stored_views(10, 4))
    np.testing.assert_array_equal(a, [0, 0, 0, 0, 4, 4, 4, 4, 8, 9])
    np.testing.assert_array_equal(b, [0, 4, 4, 4, 4, 8, 8, 8, 8, 9])
    np.testing.assert_array_equal(offset, [0, 1, 2, 3, 0, 1, 2, 3, 0, 0])


def test_the_log_domain_of_counts_round_trips_every_uint16_value() -> None:
    counts = np.arange(65536, dtype=np.uint16)
    back = sparse.from_linear(sparse.to_linear(counts, True), True, np.dtype("uint16"))
    np.testing.assert_array_equal(back[1:], counts[1:])
    assert back[0] == 1  # zero counts are read as one (the log needs a positive count)


@pytest.mark.parametrize("restoration", ["unet", "linear"])
def test_stored_views_are_exact_and_flags_round_trip_through_the_container(
    fan_scan, restoration, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "s.ctpz"
    ctpress.compress(
        fan_scan, path, codec="sparse-unet", keep_every=4, restoration=restoration, chunk_views=40
    )
    expected = np.zeros(96, dtype=bool)
    for start in (0, 40, 80):
        stop = min(start + 40, 96)
        expected[start + sparse.stored_views(stop - start, 4)] = True
    with ctpress.open(path) as f:
        np.testing.assert_array_equal(f.stored_views(), expected)
        mask, stored = f.read_stored_views()
        np.testing.assert_array_equal(mask, expected)
        decoded = f.read_scan().projections
    np.testing.assert_array_equal(stored, fan_scan.projections[expected])
    np.testing.assert_array_equal(decoded[expected], fan_scan.projections[expected])
    assert not np.array_equal(decoded, fan_scan.projections)
    assert main(["info", str(path)]) == 0
    assert f"views:       {expected.sum()} stored, {(~expected).sum()} synthesised" in (
        capsys.readouterr().out
    )


def test_inner_codec_and_its_rate_apply_to_the_stored_views(fan_scan) -> None:
    x = fan_scan.projections
    codec = get_codec("sparse-unet", keep_every=8, inner="zstd", mode="max_error", value=5.0)
    decoded = codec.decode(codec.encode(x))
    kept = codec.stored_views(len(x))
    assert np.abs(decoded[kept].astype(int) - x[kept].astype(int)).max() <= 5
    rebuilt = get_codec(codec.get_config())
    assert rebuilt.get_config() == codec.get_config()
    assert rebuilt.inner_codec.get_config()["id"] == "zstd"


def test_counts_are_interpolated_in_the_log_domain(count_scan) -> None:
    x = count_scan.projections
    log = get_codec("sparse-unet", keep_every=4, restoration="linear", log_counts=True)
    raw = get_codec("sparse-unet", keep_every=4, restoration="linear", log_counts=False)
    truth = -np.log(np.maximum(x, 1))
    errors = [
        np.mean((-np.log(np.maximum(c.decode(c.encode(x)), 1)) - truth) ** 2) for c in (log, raw)
    ]
    assert errors[0] < errors[1]


def test_bad_settings_and_helical_scans_are_refused(fan_scan) -> None:
    with pytest.raises(InputError, match="keep_every"):
        get_codec("sparse-unet", keep_every=1)
    with pytest.raises(InputError, match="its own inner"):
        get_codec("sparse-unet", inner="sparse-unet")
    with pytest.raises(InputError, match="does not support 'lossless'"):
        get_codec("sparse-unet", inner="sz3")
    helical = simulate_scan(
        None, geometry_kind="helical", n_views=32, det_rows=2, det_cols=32, i0=1e5
    )
    with pytest.raises(InputError, match="helical"):
        ctpress.compress(helical, codec="sparse-unet")


def test_a_damaged_chunk_is_detected_and_the_others_still_decode(fan_scan, tmp_path) -> None:
    path = tmp_path / "s.ctpz"
    ctpress.compress(fan_scan, path, codec="sparse-unet", chunk_views=32)
    clean = ctpress.decompress(path).projections
    damage_chunk(path, 1)
    with ctpress.open(path) as f:
        np.testing.assert_array_equal(f.read_views(0, 32), clean[:32])
        np.testing.assert_array_equal(f.read_views(64, 96), clean[64:])
        with pytest.raises(CorruptFileError):
            f.read_views(32, 64)


def test_other_weights_are_refused(fan_scan, monkeypatch) -> None:
    """A chunk of weights this installation lacks is refused; chunks of the earlier
    weights it keeps decode (the golden files written before the conjugate-ray inputs)."""
    codec = get_codec("sparse-unet", keep_every=4)
    network = sparse.sinogram_unet()
    other = type(network)(network.config, network.convs, b"\x00" * 8)
    with monkeypatch.context() as patch:
        patch.setattr("ctpress.codecs.sparse_unet.sinogram_unet", lambda: other)
        chunk = codec.encode(fan_scan.projections)
    with pytest.raises(WeightsMismatchError):
        codec.decode(chunk)
    earlier = store.entries(str(store.weights_dir()), sparse.SINOGRAM_METHOD)[1:]
    assert earlier and earlier[0]["config"]["in_channels"] == 5


def sparse_flags(chunk: bytes) -> int:
    """The flags byte of a framed sparse-unet chunk."""
    from ctpress.codecs.framing import checked_chunk_header

    offset = checked_chunk_header(chunk)[1]
    return chunk[offset + 2]


_DECODE = """
import hashlib, sys
import numpy as np
from ctpress.codecs import get_codec
chunk = open(sys.argv[1], "rb").read()
print(hashlib.sha256(get_codec("sparse-unet").decode(chunk).tobytes()).hexdigest())
"""


def test_decode_is_identical_across_processes_threads_and_instruction_sets(
    fan_scan, tmp_path
) -> None:
    codec = get_codec("sparse-unet", keep_every=8)
    (context,) = chunk_contexts(fan_scan, 96)
    chunk = codec.encode(fan_scan.projections, context)
    assert sparse_flags(chunk) & 4  # with the conjugate-ray table
    path = tmp_path / "chunk.bin"
    path.write_bytes(chunk)
    package_root = str(Path(ctpress.__file__).resolve().parents[1])
    digests = {hashlib.sha256(codec.decode(chunk).tobytes()).hexdigest()}
    for isa, threads in [("default", "1"), ("avx2", "2"), ("avx512", "2")]:
        env = dict(os.environ, PYTHONPATH=package_root, OMP_NUM_THREADS=threads)
        env.update(OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads, ATEN_CPU_CAPABILITY=isa)
        done = subprocess.run(
            [sys.executable, "-c", _DECODE, str(path)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert len(digests) == 1


def test_recon_restore_reconstructs_the_stored_views(fan_scan, tmp_path) -> None:
    path = tmp_path / "s.ctpz"
    ctpress.compress(fan_scan, path, codec="sparse-unet", keep_every=4)
    out = tmp_path / "r.npy"
    assert main(["-q", "recon", str(path), str(out), "--restore"]) == 0
    image = np.load(out)
    assert image.shape == (2, 64, 64) and np.isfinite(image).all()
    plain = tmp_path / "plain.ctpz"
    ctpress.compress(fan_scan, plain, codec="zstd")
    assert main(["-q", "recon", str(plain), str(tmp_path / "p.npy"), "--restore"]) == 2
    assert not (tmp_path / "p.npy").exists()


def _ellipses(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random phantom (HU): a water ellipse with a few denser and lighter ones inside."""
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    hu = np.full((n, n), -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.7) ** 2 <= 1] = 0.0
    for _ in range(6):
        cy, cx = rng.uniform(-0.4, 0.4, 2)
        ry, rx = rng.uniform(0.05, 0.25, 2)
        hu[((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1] = rng.uniform(-300, 1500)
    return hu


def test_a_tiny_unet_beats_linear_interpolation_on_an_unseen_phantom() -> None:
    from ctpress.learned.train_sparse import Sinogram, SinogramSampler, _fit
    from ctpress.learned.unet import FixedUNet, UNetConfig

    rng = np.random.default_rng(0)

    def sinogram(hu: np.ndarray) -> Sinogram:
        scan = simulate_scan(
            hu, geometry_kind="fan", n_views=128, det_rows=1, det_cols=64, voxel_size_mm=4.0,
            i0=None, dtype="float32",
        )  # fmt: skip
        assert scan.geometry is not None
        return Sinogram("phantom", scan.array()[:, 0], scan.geometry)

    train = [sinogram(_ellipses(64, rng)) for _ in range(6)]
    config = UNetConfig(sparse.SINOGRAM_UNET.in_channels, (8, 16), output_shift=6)
    sampler = SinogramSampler(train, [], seed=1, patch=(64, 64), noise=False, keep_every=(4,))
    model = _fit(config, sampler.batch, 500, None, lambda *a: None, "test", 5e-3)[0]
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    network = FixedUNet.from_tensors(tensors, config)
    unseen = sinogram(_ellipses(64, np.random.default_rng(99)))
    x = np.round(unseen.line_integrals * 4000)[:, None, :].astype(np.uint16)  # a scanner's grid
    kept = sparse.stored_views(len(x), 4)
    missing = np.setdiff1d(np.arange(len(x)), kept)
    angles = np.asarray(unseen.geometry.angles_rad)
    rays = sparse.choose_conjugate_rays(x, kept, False, unseen.geometry, angles)
    assert rays is not None  # a full turn: the network sees the conjugate rays, as in training
    learned = sparse.synthesise_views(x[kept], kept, len(x), False, network, rays)
    linear = sparse.interpolate_views(x[kept], kept, len(x), False)

    def mse(y: np.ndarray) -> float:
        return float(np.mean((y[missing].astype(float) - x[missing].astype(float)) ** 2))

    assert mse(learned) < 0.95 * mse(linear), (mse(learned), mse(linear))


def test_conjugate_rays_sample_the_missing_views_of_a_full_rotation() -> None:
    scan = simulate_scan(
        None, geometry_kind="fan", n_views=120, det_rows=1, det_cols=64, i0=None,
        dtype="float32",
    )  # fmt: skip
    assert scan.geometry is not None
    truth = np.round(scan.array() * 4000).astype(np.int64)
    kept = sparse.stored_views(120, 4)
    missing = np.setdiff1d(np.arange(120), kept)
    angles = np.asarray(scan.geometry.angles_rad)
    errors = {}
    for handedness in (1, -1):
        rays = conjugate.conjugate_rays(scan.geometry, angles, 64, handedness)
        assert rays is not None
        values, distance = conjugate.conjugate_interpolation(truth[kept], kept, 120, rays)
        inside = distance[missing] >= 0
        assert inside.mean() > 0.9
        errors[handedness] = np.abs(values[missing] - truth[missing])[:, 0][inside].mean()
    a, b, offset = sparse.view_positions(120, kept)
    w = np.maximum(b - a, 1)[:, None, None]
    linear = (truth[a] * (w - offset[:, None, None]) + truth[b] * offset[:, None, None]) // w
    linear_error = np.abs(linear[missing] - truth[missing]).mean()
    # the simulator's convention (1) samples the missing views; the mirrored one does not
    assert errors[1] < 0.8 * linear_error < errors[-1], (errors, linear_error)
    picked = sparse.choose_conjugate_rays(truth, kept, False, scan.geometry, angles)
    assert picked is not None and np.array_equal(picked.shift, rays_of(scan, 1).shift)
    # a half rotation of parallel beam, or no geometry: no conjugate views inside the chunk
    assert sparse.choose_conjugate_rays(truth, kept, False, None, None) is None


def rays_of(scan: ctpress.Scan, handedness: int) -> conjugate.ConjugateRays:
    assert scan.geometry is not None
    angles = np.asarray(scan.geometry.angles_rad)
    rays = conjugate.conjugate_rays(scan.geometry, angles, scan.shape[2], handedness)
    assert rays is not None
    return rays


def test_the_conjugate_ray_table_round_trips_and_damage_is_refused(fan_scan) -> None:
    rays = rays_of(fan_scan, 1)
    data = rays.to_bytes()
    back, used = conjugate.ConjugateRays.from_bytes(data + b"inner", 64, 96)
    assert used == len(data)
    np.testing.assert_array_equal(back.shift, rays.shift)
    np.testing.assert_array_equal(back.column, rays.column)
    assert back.turn == rays.turn
    twice = rays.flipped_columns().flipped_columns().reversed_views().reversed_views()
    np.testing.assert_array_equal(twice.shift, rays.shift)
    np.testing.assert_array_equal(twice.column, rays.column)
    for bad, cols, views in [
        (data[:5], 64, 96),  # truncated head
        (data[:-3], 64, 96),  # truncated table
        (data, 63, 96),  # another detector width
        (data, 64, 96 * 65),  # more turns than a chunk may hold
        (data[:12] + bytes(len(data) - 12), 64, 96),  # not zlib
    ]:
        with pytest.raises(CorruptFileError):
            conjugate.ConjugateRays.from_bytes(bad, cols, views)
    crafted = conjugate.ConjugateRays(rays.shift, rays.column + 64 * 256, rays.turn)
    with pytest.raises(CorruptFileError, match="impossible"):
        conjugate.ConjugateRays.from_bytes(crafted.to_bytes(), 64, 96)
