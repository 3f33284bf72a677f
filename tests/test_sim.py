"""Tests of the CT simulator: projector accuracy, conventions, noise, default scan."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ctpress.errors import InputError
from ctpress.scan import Geometry, Scan
from ctpress.sim import (
    clinical_views,
    default_scan,
    disc_phantom,
    fit_geometry,
    forward_project,
    forward_project_tensor,
    hu_to_mu,
    load_default_volume,
    quantise_uint16,
    shepp_logan_2d,
    shepp_logan_3d,
    simulate_scan,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread: ``make test`` runs two pytest workers on two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _water_box(shape: tuple[int, int, int] = (8, 24, 24)) -> np.ndarray:
    """HU volume: air with a centred water block (a quarter margin in y and x)."""
    hu = np.full(shape, -1000, dtype=np.int16)
    _, ny, nx = shape
    hu[:, ny // 4 : -ny // 4, nx // 4 : -nx // 4] = 0
    return hu


def test_parallel_disc_matches_analytic_chord() -> None:
    n, radius, mu = 128, 40.0, 0.02
    proj = forward_project(disc_phantom(n, radius, mu), 1.0, Geometry.parallel(12), (1, 160))
    s = np.arange(160) - 79.5
    inside = np.abs(s) < 0.9 * radius
    chord = 2 * mu * np.sqrt(radius**2 - s[inside] ** 2)
    rel = np.abs(proj[:, 0, inside] - chord) / chord
    assert proj.shape == (12, 1, 160) and proj.dtype == np.float32
    assert rel.max() < 0.02
    assert np.abs(proj[:, 0, np.abs(s) > radius + 2]).max() == 0


def _astra_sinogram(image: np.ndarray, proj_geom: dict, kind: str) -> np.ndarray:
    astra = pytest.importorskip("astra")
    vol_geom = astra.create_vol_geom(*image.shape)
    projector = astra.create_projector(kind, proj_geom, vol_geom)
    # ASTRA's 2-D image rows run towards -y, ours towards +y: flip rows.  Angles, detector
    # column direction u = (cos a, sin a) and fan source (sin a, -cos a) * R are the same.
    sino_id, sino = astra.create_sino(np.ascontiguousarray(image[::-1]), projector)
    astra.data2d.delete(sino_id)
    astra.projector.delete(projector)
    return sino


def _asymmetric_shepp_logan(n: int) -> np.ndarray:
    """Shepp-Logan plus an off-centre disc, so that a wrong axis mapping shows."""
    return shepp_logan_2d(n) + disc_phantom(n, n / 16, 0.03, center_px=(n / 5, n / 8))


def _rel_rmse(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - ref) ** 2) / np.mean(ref**2)))


@pytest.mark.parametrize("kind", ["linear", "strip"])
def test_parallel_matches_astra(kind: str) -> None:
    astra = pytest.importorskip("astra")
    image = _asymmetric_shepp_logan(128)
    geom = Geometry.parallel(60)
    ours = forward_project(image, 1.0, geom, (1, 184))[:, 0]
    ref = _astra_sinogram(image, astra.create_proj_geom("parallel", 1.0, 184, geom.angles()), kind)
    assert _rel_rmse(ours, ref) < 0.02
    # The mapping matters: without the row flip the sinograms disagree.
    unflipped = _astra_sinogram(
        image[::-1], astra.create_proj_geom("parallel", 1.0, 184, geom.angles()), kind
    )
    assert _rel_rmse(ours, unflipped) > 0.05


def test_fan_flat_matches_astra() -> None:
    astra = pytest.importorskip("astra")
    image = _asymmetric_shepp_logan(128)
    sid, sdd = 300.0, 550.0
    geom = Geometry.circular("fan", 60, sid, sdd, detector_spacing_mm=(1.0, 2.0))
    ours = forward_project(image, 1.0, geom, (1, 200))[:, 0]
    proj_geom = astra.create_proj_geom("fanflat", 2.0, 200, geom.angles(), sid, sdd - sid)
    ref = _astra_sinogram(image, proj_geom, "line_fanflat")
    assert _rel_rmse(ours, ref) < 0.02


@pytest.mark.parametrize("detector_shape", ["flat", "cylindrical"])
def test_fan_disc_central_column_and_symmetry(detector_shape: str) -> None:
    radius, mu = 30.0, 0.02
    geom = Geometry.circular(
        "fan", 8, 200.0, 400.0, detector_shape=detector_shape, detector_spacing_mm=(1, 1.5)
    )
    proj = forward_project(disc_phantom(96, radius, mu), 1.0, geom, (1, 121))[:, 0]
    assert proj[:, 60] == pytest.approx(2 * mu * radius, rel=0.01)
    np.testing.assert_allclose(proj, proj[:, ::-1], atol=1e-3 * proj.max())
    assert np.abs(proj - proj[0]).max() < 0.02 * proj.max()  # rotation invariant
    assert proj[:, 0].max() == 0 and proj[:, -1].max() == 0


def test_flat_and_cylindrical_agree_on_central_ray() -> None:
    vol = disc_phantom(48, 18.0, 0.02, n_slices=16)
    kw = {"detector_spacing_mm": (1.0, 1.2)}
    flat = Geometry.circular("cone", 6, 150.0, 300.0, **kw)
    cyl = Geometry.circular("cone", 6, 150.0, 300.0, detector_shape="cylindrical", **kw)
    p_flat = forward_project(vol, 1.0, flat, (5, 61))
    p_cyl = forward_project(vol, 1.0, cyl, (5, 61))
    np.testing.assert_allclose(p_cyl[:, 2, 30], p_flat[:, 2, 30], rtol=1e-5)
    assert p_flat[:, 2, 30] == pytest.approx(2 * 0.02 * 18.0, rel=0.01)
    # Off-centre, the same column index sees a different ray.
    assert np.abs(p_cyl[:, 2, 5] - p_flat[:, 2, 5]).max() > 1e-3


def test_conventions_point_positions() -> None:
    """A voxel at (x, y) projects to s = x cos a + y sin a; source at (R sin a, -R cos a)."""
    image = np.zeros((64, 64), np.float32)
    image[42, 32] = 1.0  # y = 10.5, x = 0.5 (voxel centres at index - 31.5)
    par = forward_project(image, 1.0, Geometry.parallel(4, arc_rad=2 * math.pi), (1, 96))
    np.testing.assert_allclose(np.argmax(par[:, 0], axis=1) - 47.5, [0.5, 10.5, -0.5, -10.5])
    # Fan at a = 0: source on -y, so the voxel (y > 0) is far from it: magnification
    # sdd / (sid + y); the detector runs along +x.
    sid, sdd = 100.0, 200.0
    fan = Geometry(
        kind="fan",
        angles_rad=(0.0,),
        source_isocenter_mm=sid,
        source_detector_mm=sdd,
        detector_spacing_mm=(1.0, 0.05),
    )
    col = np.argmax(forward_project(image, 1.0, fan, (1, 401))[0, 0]) - 200
    assert col * 0.05 == pytest.approx(0.5 * sdd / (sid + 10.5), abs=0.05)


def test_gradient_flows() -> None:
    vol = torch.tensor(shepp_logan_3d(16), requires_grad=True)
    geom = Geometry.circular("cone", 4, 60.0, 120.0, detector_spacing_mm=(2.0, 2.0))
    forward_project_tensor(vol, 1.0, geom, (8, 24)).sum().backward()
    assert vol.grad is not None and float(vol.grad.abs().sum()) > 0


def test_phantoms_and_hu() -> None:
    sl = shepp_logan_2d(64)
    assert sl.shape == (64, 64) and sl.dtype == np.float32
    assert np.median(sl[sl > 0]) == pytest.approx(0.0192 * 1.02, rel=1e-3)
    sl3 = shepp_logan_3d(32)
    assert sl3.shape == (32, 32, 32) and sl3.max() == pytest.approx(2 * 0.0192, rel=1e-3)
    np.testing.assert_allclose(hu_to_mu(np.array([-2000, -1000, 0, 1000])), [0, 0, 0.0192, 0.0384])
    disc = disc_phantom(32, 8.0, 1.0)
    assert disc.sum() == pytest.approx(math.pi * 64, rel=0.01)
    hu, voxel = load_default_volume()
    assert hu.shape == (32, 101, 122) and hu.dtype == np.int16 and voxel == 3.0


@pytest.mark.parametrize(
    ("kind", "detector_shape"),
    [
        ("parallel", "flat"),
        ("fan", "flat"),
        ("fan", "cylindrical"),
        ("cone", "flat"),
        ("cone", "cylindrical"),
    ],
)
def test_fitted_geometry_sees_whole_volume(kind: str, detector_shape: str) -> None:
    hu = np.zeros((6, 20, 30), np.int16)  # water filling the whole box
    scan = simulate_scan(
        hu,
        geometry_kind=kind,
        n_views=12,
        det_rows=4,
        det_cols=48,
        voxel_size_mm=2.0,
        detector_shape=detector_shape,
        i0=None,
        dtype="float32",
    )
    assert scan.geometry is not None and scan.projections[:, 1:-1, 24].min() > 0
    # One more pixel of the same pitch around the detector sees nothing.
    bigger = forward_project(hu_to_mu(hu), 2.0, scan.geometry, (6, 50))
    np.testing.assert_allclose(bigger[:, 1:-1, 1:-1], scan.projections, rtol=1e-6)
    assert bigger[:, :, [0, -1]].max() == 0
    if kind == "cone":
        assert bigger[:, [0, -1]].max() == 0


def test_simulate_uint16_metadata_and_determinism() -> None:
    hu = _water_box()
    kw = {"geometry_kind": "cone", "n_views": 10, "det_rows": 4, "det_cols": 32}
    scan = simulate_scan(hu, voxel_size_mm=2.0, seed=3, **kw)
    assert isinstance(scan, Scan) and scan.shape == (10, 4, 32) and scan.dtype == np.uint16
    meta = scan.metadata
    assert meta["units"] == "line_integral" and meta["i0"] == 1e5
    assert meta["mu_water_per_mm"] == 0.0192 and "seed 3" in meta["origin"]
    assert json.loads(json.dumps(meta)) == meta
    slope, intercept = meta["rescale_slope"], meta["rescale_intercept"]
    assert math.log2(slope) == int(math.log2(slope)) and intercept <= 0
    values = scan.projections * slope + intercept
    float_scan = simulate_scan(hu, voxel_size_mm=2.0, seed=3, dtype="float32", **kw)
    np.testing.assert_allclose(values, float_scan.projections, atol=slope / 2 + 1e-6)
    assert scan.projections.max() >= 32767  # at least half the 16-bit range used
    again = simulate_scan(hu, voxel_size_mm=2.0, seed=3, **kw)
    np.testing.assert_array_equal(again.projections, scan.projections)
    other = simulate_scan(hu, voxel_size_mm=2.0, seed=4, **kw)
    assert not np.array_equal(other.projections, scan.projections)
    assert scan.geometry == again.geometry and scan.geometry.kind == "cone"


def test_poisson_noise_statistics() -> None:
    hu = _water_box((4, 32, 32))
    kw = {"geometry_kind": "fan", "n_views": 24, "det_rows": 4, "det_cols": 64, "dtype": "float32"}
    clean = simulate_scan(hu, voxel_size_mm=3.0, i0=None, **kw).projections
    i0 = 1e4
    noisy = simulate_scan(hu, voxel_size_mm=3.0, i0=i0, **kw).projections
    z = (noisy - clean) * np.sqrt(i0 * np.exp(-clean))  # var(p) ~ 1 / (i0 exp(-p))
    assert abs(z.mean()) < 0.05
    assert z.var() == pytest.approx(1.0, rel=0.1)
    counts = simulate_scan(hu, voxel_size_mm=3.0, i0=i0, **{**kw, "dtype": "counts"})
    assert counts.dtype == np.uint16 and counts.metadata["units"] == "counts"
    np.testing.assert_allclose(-np.log(counts.projections / i0), noisy, atol=1e-5)


def test_quantise_uint16_range() -> None:
    data = np.linspace(-0.01, 7.9, 1000)
    stored, slope, intercept = quantise_uint16(data)
    assert slope == 2.0**-13 and intercept <= -0.01
    assert np.abs(stored * slope + intercept - data).max() <= slope / 2 + 1e-12


def test_helical_geometry() -> None:
    hu = _water_box((12, 16, 16))
    scan = simulate_scan(
        hu, geometry_kind="helical", n_views=36, det_rows=4, det_cols=24, voxel_size_mm=2.0
    )
    geom = scan.geometry
    assert geom is not None and geom.kind == "helical" and geom.z_mm is not None
    z = np.asarray(geom.z_mm)
    assert len(z) == 36 and np.all(np.diff(z) > 0)
    # Support 26 mm (13 slices of 2 mm), collimation half of it, pitch 1: the source
    # travels 26 + 13 mm in 3 turns, 13 mm per turn.
    assert z[0] == pytest.approx(-19.5) and geom.angles()[-1] == pytest.approx(
        6 * math.pi * 35 / 36
    )
    assert np.diff(z)[0] == pytest.approx(13.0 * np.diff(geom.angles())[0] / (2 * math.pi))
    assert scan.projections[18].max() > scan.projections[0].max()


def test_explicit_geometry_and_errors() -> None:
    geom = Geometry.parallel(5, detector_spacing_mm=(2.0, 2.0))
    scan = simulate_scan(_water_box(), geometry=geom, det_rows=2, det_cols=20, i0=None)
    assert scan.geometry is geom and scan.shape == (5, 2, 20)
    with pytest.raises(InputError):
        simulate_scan(_water_box(), dtype="int8")
    with pytest.raises(InputError):
        simulate_scan(_water_box(), dtype="counts", i0=None)
    with pytest.raises(InputError):
        fit_geometry("spiral", 4, (1, 8), (1.0, 1.0, 1.0))
    with pytest.raises(InputError):
        forward_project(np.zeros((2, 2, 2, 2)), 1.0, geom, (1, 4))


def test_default_scan() -> None:
    scan = default_scan()
    assert scan.shape == (360, 16, 192) and scan.dtype == np.uint16
    assert scan.geometry is not None and scan.geometry.kind == "cone"
    assert scan.geometry.detector_shape == "cylindrical"
    meta = scan.metadata
    assert meta["units"] == "line_integral" and meta["i0"] == 1e5
    values = scan.projections * meta["rescale_slope"] + meta["rescale_intercept"]
    assert 3.0 < values.max() < 12.0 and values[:, 8, 96].min() > 0.5


def test_clinical_views_keep_the_scanners_step_per_channel() -> None:
    def fan(channel_mm: float) -> Geometry:
        return Geometry("fan", (0.0,), 595.0, 1085.6, (1.0, channel_mm))

    assert clinical_views(fan(1.2858)) == 1152  # the scanner itself
    assert clinical_views(fan(2 * 1.2858)) == 576  # channels twice as wide
    with pytest.raises(InputError, match="fan or cone"):
        clinical_views(Geometry("parallel", (0.0,)))


def test_n_views_none_simulates_one_turn_at_the_clinical_sampling() -> None:
    scan = simulate_scan("shepp_logan", geometry_kind="fan", n_views=None, det_rows=1,
                         det_cols=24, i0=None, dtype="float32")  # fmt: skip
    assert scan.geometry is not None
    assert scan.shape[0] == len(scan.geometry.angles_rad) == clinical_views(scan.geometry)
    with pytest.raises(InputError, match="fan or cone"):
        simulate_scan("shepp_logan", geometry_kind="parallel", n_views=None)
