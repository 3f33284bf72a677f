"""Reconstruction: accuracy against analytic phantoms, ASTRA and ODL, and bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from ctpress.errors import InputError
from ctpress.recon import (
    FILTERS,
    fbp,
    fdk,
    field_of_view_mask,
    hu_to_mu,
    mu_to_hu,
    reconstruct,
    sirt,
)
from ctpress.recon.filters import filter_projections, filter_response
from ctpress.scan import Geometry, Scan
from ctpress.sim.phantom import disc_phantom, shepp_logan_2d
from ctpress.sim.projector import detector_rays, forward_project

MU = 0.02
R_MM, D_MM = 300.0, 600.0
#: Discs / balls as (x, y, z, radius, mu): a large body and an off-centre insert.
BALLS = ((0.0, 0.0, 0.0, 40.0, MU), (15.0, -10.0, 6.0, 8.0, 0.5 * MU))
BALLS_3D = ((0.0, 0.0, 0.0, 30.0, MU), (10.0, -8.0, 6.0, 6.0, 0.5 * MU))


def analytic_projections(geometry: Geometry, det_shape: tuple[int, int], balls=BALLS) -> np.ndarray:
    """Exact line integrals of uniform balls (for parallel and fan beam: of z-cylinders,
    i.e. the same disc in every detector row)."""
    origin, direction, _ = detector_rays(geometry, det_shape)
    out = torch.zeros(origin.shape[:3], dtype=torch.float64)
    for x, y, z, radius, mu in balls:
        to_centre = torch.tensor([x, y, z], dtype=torch.float64) - origin
        if geometry.kind != "cone":
            to_centre[..., 2] = 0.0  # in-plane rays: distance to the cylinder's axis
        along = (to_centre * direction).sum(-1)
        dist2 = (to_centre * to_centre).sum(-1) - along**2
        out += mu * 2 * torch.sqrt((radius**2 - dist2).clamp(min=0))
    return out.numpy().astype(np.float32)


def grid(shape: tuple[int, ...], size: float) -> list[np.ndarray]:
    """Voxel-centre coordinates (z, y, x) or (y, x) in mm, as in the projector."""
    axes = [(np.arange(n) - (n - 1) / 2) * size for n in shape]
    return np.meshgrid(*axes, indexing="ij")


def interior_errors(image: np.ndarray, size: float, margin: float = 8.0) -> tuple[float, float]:
    """(relative error of the mean, max relative pointwise error) inside the body disc,
    ``margin`` mm away from its edge and from the insert."""
    y, x = grid(image.shape, size)
    body, insert = BALLS[0], BALLS[1]
    inside = (np.hypot(x - body[0], y - body[1]) < body[3] - margin) & (
        np.hypot(x - insert[0], y - insert[1]) > insert[3] + margin
    )
    values = image[inside]
    return float(values.mean() / MU - 1), float(np.abs(values / MU - 1).max())


def fan_geometry(n_views: int = 360, arc: float = 2 * math.pi, **kw) -> Geometry:
    return Geometry.circular(
        "fan", n_views, R_MM, D_MM, arc_rad=arc, detector_spacing_mm=(1.0, 1.6), **kw
    )


# --------------------------------------------------------------------------- filters


def test_filter_response_is_a_windowed_ramp():
    n, tau = 64, 0.5
    ramp = filter_response(n, tau)
    freq = np.fft.rfftfreq(2 * (ramp.size - 1)) / tau  # cycles / mm
    mid = slice(ramp.size // 8, ramp.size // 2)
    np.testing.assert_allclose(ramp[mid], freq[mid], rtol=0.02)
    assert 0 < ramp[0] < 0.02 * ramp[-1]  # the discrete ramp keeps a small DC term
    windows = [filter_response(n, tau, f, cutoff=0.5) for f in FILTERS]
    top = freq > 0.5 * freq[-1] + 1e-9
    for w in windows:
        assert np.all(w[top] == 0) and np.all(w <= ramp + 1e-12)
    assert np.all(windows[3] <= windows[2] + 1e-12)  # hann <= cosine
    with pytest.raises(InputError, match="unknown filter"):
        filter_response(n, tau, "butterworth")
    with pytest.raises(InputError, match="cutoff"):
        filter_response(n, tau, cutoff=1.5)


def test_filter_is_linear_convolution_not_circular():
    n = 32
    impulse = torch.zeros(2, n, dtype=torch.float64)
    impulse[0, 0], impulse[1, -1] = 1.0, 1.0
    out = filter_projections(impulse, 1.0)
    # Kak & Slaney kernel, lags 0..n-1: h0 = 1/4, odd lags -1/(pi k)^2, even lags 0.
    k = np.arange(n)
    expected = np.where(k % 2 == 1, -1 / (np.pi * np.maximum(k, 1)) ** 2, 0.0)
    expected[0] = 0.25
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(out[1].numpy(), expected[::-1], atol=1e-12)


# --------------------------------------------------------------------------- FBP


def test_parallel_fbp_recovers_analytic_disc():
    geometry = Geometry.parallel(180, detector_spacing_mm=(1.0, 0.8))
    sino = analytic_projections(geometry, (1, 160))
    image = fbp(sino, geometry, (128, 128), 0.8)
    assert image.shape == (128, 128) and image.dtype == np.float32
    mean_err, max_err = interior_errors(image, 0.8)
    assert abs(mean_err) < 0.01
    assert max_err < 0.025


def test_parallel_fbp_matches_astra():
    astra = pytest.importorskip("astra")
    n = 96
    image = shepp_logan_2d(n)
    geometry = Geometry.parallel(144, detector_spacing_mm=(1.0, 1.0))
    n_cols = 144
    sino = forward_project(image, 1.0, geometry, (1, n_cols))[:, 0]
    ours = fbp(sino, geometry, (n, n), 1.0)
    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n_cols, geometry.angles())
    projector = astra.create_projector("strip", proj_geom, vol_geom)
    sino_id = astra.data2d.create("-sino", proj_geom, sino)
    rec_id = astra.data2d.create("-vol", vol_geom)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=projector, ProjectionDataId=sino_id, ReconstructionDataId=rec_id)
    cfg["option"] = {"FilterType": "ram-lak"}
    alg = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(alg)
        theirs = astra.data2d.get(rec_id)[::-1, :]  # ASTRA rows point to -y
    finally:
        astra.algorithm.delete(alg)
        astra.data2d.delete([sino_id, rec_id])
        astra.projector.delete(projector)
    mask = field_of_view_mask((n, n), 1.0, geometry, n_cols)
    rel_rmse = np.sqrt(np.mean((ours - theirs)[mask] ** 2) / np.mean(theirs[mask] ** 2))
    assert rel_rmse < 0.01


@pytest.mark.parametrize("shape", ["flat", "cylindrical"])
def test_fan_fbp_recovers_analytic_disc(shape):
    geometry = fan_geometry(detector_shape=shape)
    sino = analytic_projections(geometry, (1, 160))
    mean_err, max_err = interior_errors(fbp(sino, geometry, (128, 128), 0.8), 0.8)
    assert abs(mean_err) < 0.01
    assert max_err < 0.025


@pytest.mark.parametrize("direction", [1, -1])
def test_short_scan_with_parker_weights(direction):
    # 2 * g_max = 2 atan(127.2 / 600) = 0.418 rad; cover pi + 0.5 rad.
    arc = math.pi + 0.5
    angles = direction * np.arange(240) * arc / 240
    geometry = Geometry(
        kind="fan",
        angles_rad=tuple(angles),
        source_isocenter_mm=R_MM,
        source_detector_mm=D_MM,
        detector_spacing_mm=(1.0, 1.6),
    )
    sino = analytic_projections(geometry, (1, 160))
    mean_err, max_err = interior_errors(fbp(sino, geometry, (128, 128), 0.8), 0.8)
    assert abs(mean_err) < 0.01
    assert max_err < 0.025


def test_over_scan_keeps_whole_turns():
    geometry = fan_geometry(450, arc=2.5 * math.pi)  # the last quarter turn is left out
    sino = analytic_projections(geometry, (1, 160))
    mean_err, max_err = interior_errors(fbp(sino, geometry, (128, 128), 0.8), 0.8)
    assert abs(mean_err) < 0.01
    assert max_err < 0.025


def test_fbp_inverts_the_projector_and_keeps_orientation():
    n, size = 96, 1.0
    image = disc_phantom(n, 12, MU, center_px=(-20.0, 14.0))  # (y, x) off centre
    geometry = fan_geometry(180)
    sino = forward_project(image, size, geometry, (1, 128))
    rec = fbp(sino, geometry, (n, n), size)
    y, x = grid((n, n), size)
    inside = np.hypot(y + 20, x - 14) < 8
    assert abs(rec[inside].mean() / MU - 1) < 0.01
    outside = np.hypot(y + 20, x - 14) > 16
    assert np.abs(rec[outside]).max() < 0.1 * MU


def test_quarter_turn_grouping_matches_plain_back_projection():
    """A non-square grid takes the ungrouped path; it must agree with the square one."""
    geometry = fan_geometry(120)
    sino = analytic_projections(geometry, (1, 160))
    square = fbp(sino, geometry, (64, 64), 1.6)
    wide = fbp(sino, geometry, (64, 66), 1.6)
    np.testing.assert_allclose(wide[:, 1:-1], square, atol=1e-6 * MU * 100)


def test_fan_stack_rows_and_filters():
    geometry = fan_geometry(180)
    sino = np.repeat(analytic_projections(geometry, (1, 160)), 3, axis=1)
    threads = torch.get_num_threads()
    stack = fbp(sino, geometry, (64, 64), 1.6, filter="hann", cutoff=0.8)
    assert torch.get_num_threads() == threads  # the back-projection's workers give it back
    assert stack.shape == (3, 64, 64)
    np.testing.assert_allclose(stack[0], stack[2], atol=1e-7)
    one = fbp(sino, geometry, (64, 64), 1.6, filter="hann", cutoff=0.8, rows=1)
    assert one.shape == (64, 64)
    np.testing.assert_allclose(one, stack[1], atol=1e-7)
    # Smoother filters still preserve the mean attenuation of a large region.
    mean_err, _ = interior_errors(stack[0], 1.6, margin=12.0)
    assert abs(mean_err) < 0.02
    with pytest.raises(InputError, match="rows"):
        fbp(sino, geometry, rows=[5])


def test_fan_fbp_cross_check_with_odl():
    odl = pytest.importorskip("odl")
    tomo = getattr(odl, "tomo", None)
    if tomo is None:
        tomo = pytest.importorskip("odl.applications.tomo")
    n, n_cols, pitch = 128, 192, 1.6
    geometry = fan_geometry(360)
    sino = analytic_projections(geometry, (1, n_cols))[:, 0]
    ours = fbp(sino, geometry, (n, n), 1.0)
    space = odl.uniform_discr([-n / 2] * 2, [n / 2] * 2, [n, n], dtype="float32")
    half = math.pi / 360
    angle_part = odl.nonuniform_partition(
        geometry.angles(), min_pt=-half, max_pt=2 * math.pi - half
    )
    det_part = odl.uniform_partition(-n_cols * pitch / 2, n_cols * pitch / 2, n_cols)
    odl_geom = tomo.FanBeamGeometry(angle_part, det_part, src_radius=R_MM, det_radius=D_MM - R_MM)
    ray = tomo.RayTransform(space, odl_geom, impl="astra_cpu")
    result = tomo.fbp_op(ray, filter_type="Ram-Lak", frequency_scaling=1.0)(sino)
    theirs = np.asarray(getattr(result, "data", result)).T  # ODL arrays are (x, y)
    y, x = grid((n, n), 1.0)
    inner = np.hypot(y, x) < 32
    assert abs(theirs[inner].mean() / ours[inner].mean() - 1) < 0.02
    rel_rmse = np.sqrt(np.mean((ours - theirs)[inner] ** 2) / np.mean(theirs[inner] ** 2))
    assert rel_rmse < 0.03


# --------------------------------------------------------------------------- FDK


@pytest.mark.parametrize("shape", ["flat", "cylindrical"])
def test_fdk_recovers_analytic_sphere(shape):
    geometry = Geometry.circular(
        "cone", 120, 200.0, 400.0, detector_spacing_mm=(2.5, 2.5), detector_shape=shape
    )
    proj = analytic_projections(geometry, (48, 64), BALLS_3D)
    n, size = 48, 1.5
    volume = fdk(proj, geometry, (n, n, n), size)
    assert volume.shape == (n, n, n)
    z, y, x = grid((n, n, n), size)
    inside = (np.sqrt(x**2 + y**2 + z**2) < 24) & (
        np.sqrt((x - 10) ** 2 + (y + 8) ** 2 + (z - 6) ** 2) > 9
    )
    assert abs(volume[inside].mean() / MU - 1) < 0.01
    assert np.abs(volume[inside] / MU - 1).max() < 0.04
    insert = np.sqrt((x - 10) ** 2 + (y + 8) ** 2 + (z - 6) ** 2) < 3
    assert abs(volume[insert].mean() / (1.5 * MU) - 1) < 0.02


def test_fdk_short_scan_and_errors():
    arc = math.pi + 0.6  # fan angle 2 atan(80 / 400) = 0.395 rad
    geometry = Geometry.circular(
        "cone", 100, 200.0, 400.0, arc_rad=arc, detector_spacing_mm=(2.5, 2.5)
    )
    proj = analytic_projections(geometry, (16, 64), BALLS_3D)
    volume = fdk(proj, geometry, (8, 48, 48), 1.5)
    z, y, x = grid((8, 48, 48), 1.5)
    inside = (np.sqrt(x**2 + y**2 + z**2) < 24) & (
        np.sqrt((x - 10) ** 2 + (y + 8) ** 2 + (z - 6) ** 2) > 9
    )
    assert abs(volume[inside].mean() / MU - 1) < 0.01
    with pytest.raises(InputError, match="short scan"):
        fdk(proj, Geometry.circular("cone", 100, 200.0, 400.0, arc_rad=math.pi))
    with pytest.raises(InputError, match="cone"):
        fdk(proj[:, 0], fan_geometry(100))
    with pytest.raises(InputError, match="tigre"):
        fdk(proj, geometry, backend="tigre")


def test_fdk_orbit_off_the_volume_centre():
    """A circular orbit in the plane z = 8 mm (constant ``z_mm``) still lines up."""
    base = Geometry.circular("cone", 90, 200.0, 400.0, detector_spacing_mm=(2.5, 2.5))
    geometry = replace(base, z_mm=(8.0,) * base.n_views)
    proj = analytic_projections(geometry, (24, 64), BALLS_3D)
    volume = fdk(proj, geometry, (16, 48, 48), 1.5)
    z, y, x = grid((16, 48, 48), 1.5)
    insert = np.sqrt((x - 10) ** 2 + (y + 8) ** 2 + (z - 6) ** 2) < 3
    assert abs(volume[insert].mean() / (1.5 * MU) - 1) < 0.02


# --------------------------------------------------------------------------- SIRT


def test_sirt_converges():
    n = 24
    image = disc_phantom(n, 8, MU, center_px=(3.0, -4.0))
    geometry = Geometry.parallel(30, detector_spacing_mm=(1.0, 1.0))
    sino = forward_project(image, 1.0, geometry, (1, 34))

    def error(rec: np.ndarray) -> float:
        return float(np.sqrt(np.mean((rec - image) ** 2) / np.mean(image**2)))

    def run(n_iter: int, **kw) -> np.ndarray:
        return sirt(sino, geometry, (n, n), 1.0, n_iter=n_iter, view_batch=30, **kw)

    few, many = run(2), run(20)
    assert few.shape == (n, n) and many.min() >= 0
    assert error(many) < 0.5 * error(few)
    assert error(many) < 0.2
    # Restarting from the 20-iteration image keeps improving the fit to the data.
    more = run(3, x0=many)
    fit = [np.abs(forward_project(r, 1.0, geometry, (1, 34)) - sino).mean() for r in (many, more)]
    assert fit[1] < fit[0]


# --------------------------------------------------------------------------- units


def test_units_and_field_of_view():
    hu = np.array([-1000.0, 0.0, 1000.0], dtype=np.float32)
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu)), hu, atol=1e-3)
    assert mu_to_hu(np.float32(0.0192)) == pytest.approx(0.0)
    geometry = Geometry.parallel(10, detector_spacing_mm=(1.0, 1.0))
    mask = field_of_view_mask((64, 64), 1.0, geometry, 41)  # half width 20 mm
    y, x = grid((64, 64), 1.0)
    np.testing.assert_array_equal(mask, np.hypot(x, y) <= 20)
    fan = fan_geometry(10)
    radius = R_MM * math.sin(math.atan(79.5 * 1.6 / D_MM))
    mask3 = field_of_view_mask((2, 128, 128), 1.0, fan, 160)
    y, x = grid((128, 128), 1.0)
    np.testing.assert_array_equal(mask3[1], np.hypot(x, y) <= radius)


# --------------------------------------------------------------------------- dispatcher


def test_reconstruct_converts_stored_values():
    geometry = fan_geometry(240)
    sino = analytic_projections(geometry, (1, 160))
    reference = fbp(sino, geometry, (64, 64), 1.6)
    slope, intercept = 1e-4, -0.5
    stored = np.round((sino - intercept) / slope).astype(np.uint16)
    scan = Scan(
        stored,
        geometry,
        metadata={"rescale_slope": slope, "rescale_intercept": intercept},
    )
    image = reconstruct(scan, image_shape=(64, 64), pixel_size_mm=1.6)
    np.testing.assert_allclose(image, reference, atol=2e-3 * MU)
    i0 = 50000.0
    counts = Scan(
        (i0 * np.exp(-sino)).astype(np.float32), geometry, metadata={"units": "counts", "i0": i0}
    )
    image = reconstruct(counts, "fdk", image_shape=(64, 64), pixel_size_mm=1.6)
    np.testing.assert_allclose(image, reference, atol=2e-3 * MU)
    with pytest.raises(InputError, match="i0"):
        reconstruct(Scan(counts.projections, geometry, metadata={"units": "counts"}))


def test_reconstruct_dispatches_cone_and_sirt():
    geometry = Geometry.circular("cone", 60, 200.0, 400.0, detector_spacing_mm=(2.5, 2.5))
    proj = analytic_projections(geometry, (8, 48), BALLS_3D)
    volume = reconstruct(Scan(proj, geometry), volume_shape=(4, 32, 32), voxel_size_mm=2.0)
    assert volume.shape == (4, 32, 32)
    par = Geometry.parallel(20, detector_spacing_mm=(1.0, 2.0))
    sino = analytic_projections(par, (1, 48))
    image = reconstruct(Scan(sino, par), "sirt", shape=(24, 24), voxel_size_mm=3.0, n_iter=2)
    assert image.shape == (24, 24) and image.max() > 0


def test_bad_input_errors():
    sino = np.zeros((10, 1, 32), dtype=np.float32)
    helical = Geometry(
        kind="helical",
        angles_rad=tuple(np.linspace(0, 2 * np.pi, 10)),
        source_isocenter_mm=R_MM,
        source_detector_mm=D_MM,
        z_mm=tuple(np.linspace(0, 5, 10)),
    )
    with pytest.raises(InputError, match="rebinning"):
        reconstruct(Scan(sino, helical), "sirt")
    with pytest.raises(InputError, match="too short"):
        reconstruct(Scan(sino, helical))
    with pytest.raises(InputError, match="rebin"):
        fbp(sino, helical)
    with pytest.raises(InputError, match="no geometry"):
        reconstruct(Scan(sino))
    with pytest.raises(InputError, match="11 view angles"):
        fbp(sino, Geometry.parallel(11))
    with pytest.raises(InputError, match="0 view angles"):
        reconstruct(Scan(sino, Geometry(kind="parallel")))
    with pytest.raises(InputError, match="algorithm"):
        reconstruct(Scan(sino, Geometry.parallel(10)), "art")
    with pytest.raises(InputError, match="pi of angular coverage"):
        fbp(sino, Geometry.parallel(10, arc_rad=math.pi / 2))
    with pytest.raises(InputError, match="increasing or decreasing"):
        fbp(sino, Geometry(kind="parallel", angles_rad=(0, 1, 2, 3, 2.5, 0.5, 0.7, 1, 2, 3)))
    with pytest.raises(InputError, match="NaN"):
        fbp(np.full((10, 32), np.nan), Geometry.parallel(10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    geometry = fan_geometry(120)
    sino = analytic_projections(geometry, (1, 160))
    cpu = fbp(sino, geometry, (64, 64), 1.6)
    gpu = fbp(torch.as_tensor(sino).cuda(), geometry, (64, 64), 1.6)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4 * MU)
