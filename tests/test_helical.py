"""Helical rebinning: simulated helical scans reconstruct to the right HU of water."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ctpress.errors import InputError
from ctpress.io import read_scan, write_scan
from ctpress.recon import mu_to_hu
from ctpress.recon.helical import covered_slice_range, rebin_helical, reconstruct_helical
from ctpress.scan import Scan
from ctpress.sim import simulate_scan

N = 64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _water_cylinder() -> np.ndarray:
    yy, xx = np.mgrid[:N, :N] - (N - 1) / 2
    return np.where(yy**2 + xx**2 <= 25**2, 0.0, -1000.0)[None].repeat(24, 0).astype(np.float32)


def _water_hu(scan: Scan, z: list[float]) -> np.ndarray:
    _, volume = reconstruct_helical(scan, z, image_shape=(N, N), pixel_size_mm=2.0)
    hu = mu_to_hu(volume, scan.metadata["mu_water_per_mm"])
    return hu[:, 24:40, 24:40].mean(axis=(1, 2))


def _helical(**options: object) -> Scan:
    """The water cylinder scanned helically: 720 views x 8 rows x 96 columns."""
    return simulate_scan(
        _water_cylinder(),
        geometry_kind="helical",
        n_views=720,
        det_rows=8,
        det_cols=96,
        voxel_size_mm=2.0,
        detector_shape="cylindrical",
        **options,
    )


@pytest.fixture(scope="module")
def helical_scan() -> Scan:
    return _helical(i0=1e5, seed=1)


def test_water_is_zero_hu_after_rebinning(helical_scan: Scan) -> None:
    assert helical_scan.geometry.kind == "helical"
    assert np.all(np.abs(_water_hu(helical_scan, [-10.0, 0.0, 12.5])) < 5)


def test_dicom_ctpd_end_to_end(helical_scan: Scan, tmp_path) -> None:
    write_scan(helical_scan, tmp_path / "series", format="dicom-ctpd")
    scan = read_scan(tmp_path / "series")
    assert scan.shape == helical_scan.shape
    np.testing.assert_allclose(scan.geometry.z_mm, helical_scan.geometry.z_mm, atol=1e-4)
    assert np.all(np.abs(_water_hu(scan, [0.0])) < 5)


def test_flying_focal_spot_shifts_are_used() -> None:
    nominal = _helical(i0=None).geometry
    shift = np.where(np.arange(720) % 2 == 0, -0.75, 0.75)  # FFSZ: alternating axial shift
    true_geometry = replace(nominal, z_mm=tuple(np.asarray(nominal.z_mm) + shift))
    measured = simulate_scan(
        _water_cylinder(),
        geometry=true_geometry,
        det_rows=8,
        det_cols=96,
        voxel_size_mm=2.0,
        i0=None,
    )
    scan = Scan(
        measured.projections,
        nominal,
        measured.metadata,
        {"ffs_axial_shift_mm": shift.astype(np.float32)},
    )
    assert np.all(np.abs(_water_hu(scan, [0.0, 8.0])) < 5)
    ignored = Scan(measured.projections, nominal, measured.metadata)  # shifts not applied
    assert np.abs(_water_hu(ignored, [0.0])).max() > np.abs(_water_hu(scan, [0.0])).max()


def test_uncovered_slices_are_refused(helical_scan: Scan) -> None:
    _, hi = covered_slice_range(helical_scan)
    with pytest.raises(InputError, match="not covered"):
        rebin_helical(
            Scan(helical_scan.projections.astype(np.float32), helical_scan.geometry), [hi + 50.0]
        )
    with pytest.raises(InputError, match="helical geometry"):
        rebin_helical(Scan(np.zeros((4, 2, 8), np.float32)), [0.0])
