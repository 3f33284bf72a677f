"""DICOM-CT-PD series with compressed transfer syntaxes (JPEG-LS, HTJ2K): ``ctpress convert
--output-format dicom-ctpd`` writes them, plain pydicom + imagecodecs and ctpress.read_scan
read them back."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import HTJ2K, HTJ2KLossless, JPEGLSLossless, JPEGLSNearLossless

import ctpress
from ctpress import CorruptFileError, Geometry, InputError, Scan
from ctpress.cli import main
from ctpress.io import write_scan
from ctpress.io.dicom_fixtures import make_ctpd_series

N, ROWS, COLS = 6, 16, 64
#: Transfer syntax -> the plain imagecodecs decoder of its frames.
DECODERS = {
    JPEGLSLossless: imagecodecs.jpegls_decode,
    JPEGLSNearLossless: imagecodecs.jpegls_decode,
    HTJ2KLossless: imagecodecs.htj2k_decode,
}


def scan(seed: int = 0) -> Scan:
    """A small helical uint16 scan: a smooth ramp plus noise, so the codecs compress it."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(20000, 40000, COLS)[None, None, :]
    values = ramp + rng.normal(0, 20, (N, ROWS, COLS))
    geometry = Geometry(
        kind="helical",
        angles_rad=tuple(np.arange(N) * 2 * math.pi / 5),
        source_isocenter_mm=595.0,
        source_detector_mm=1085.6,
        detector_spacing_mm=(1.0947, 1.2858),
        detector_shape="cylindrical",
        z_mm=tuple(-50 + np.arange(N) * 0.35),
    )
    return Scan(values.astype(np.uint16), geometry=geometry)


def pydicom_views(directory: Path, syntax: str) -> np.ndarray:
    """The views of a series read with plain pydicom and imagecodecs (no ctpress), in
    InstanceNumber order, as (n_views, det_rows, det_cols) (files store channels x rows)."""
    views = {}
    for path in sorted(directory.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
        image = DECODERS[syntax](frame)
        assert image.shape == (ds.Rows, ds.Columns) == (COLS, ROWS)
        views[int(ds.InstanceNumber)] = image.T
    return np.stack([views[i] for i in sorted(views)])


@pytest.mark.parametrize(
    ("codec", "syntax"), [("jpegls", JPEGLSLossless), ("htj2k", HTJ2KLossless)]
)
def test_lossless_round_trips_through_pydicom_and_ctpress(
    tmp_path: Path, codec: str, syntax: str
) -> None:
    original = scan()
    out = tmp_path / "series"
    ctpress.convert(original, out, output_format="dicom-ctpd", codec=codec, lossless=True)
    assert np.array_equal(pydicom_views(out, syntax), original.projections)
    ds = pydicom.dcmread(next(out.glob("*.dcm")))
    assert "LossyImageCompression" not in ds
    back = ctpress.read_scan(out)
    assert np.array_equal(back.projections, original.projections)
    assert back.geometry is not None and original.geometry is not None
    turn = back.geometry.angles() - original.geometry.angles()  # read back in [pi, 3 pi)
    np.testing.assert_allclose(np.cos(turn), 1.0, atol=1e-9)
    compressed = sum(p.stat().st_size for p in out.glob("*.dcm"))
    write_scan(back, tmp_path / "plain", format="dicom-ctpd")
    assert compressed < sum(p.stat().st_size for p in (tmp_path / "plain").glob("*.dcm"))


PIXEL_ARRAY = """
import json, sys
from pathlib import Path
import pydicom
views = {}
for path in Path(sys.argv[1]).glob("*.dcm"):
    ds = pydicom.dcmread(path)
    views[int(ds.InstanceNumber)] = [ds.file_meta.TransferSyntaxUID, ds.pixel_array.T.tolist()]
print(json.dumps([views[i] for i in sorted(views)]))
"""


@pytest.mark.parametrize(
    ("codec", "max_error", "syntax"),
    [
        ("jpegls", None, JPEGLSLossless),
        ("jpegls", 3, JPEGLSNearLossless),
        ("htj2k", None, HTJ2KLossless),
    ],
)
def test_plain_pydicom_decodes_the_pixels_in_a_fresh_process(
    tmp_path: Path, codec: str, max_error: int | None, syntax: str
) -> None:
    """``ds.pixel_array`` with pydicom's own decoder plugins (pyjpegls, pylibjpeg-openjpeg,
    installed with ctpress): no ctpress and no imagecodecs call."""
    original = scan()
    out = tmp_path / "series"
    rate = {"lossless": True} if max_error is None else {"max_error": max_error}
    ctpress.convert(original, out, output_format="dicom-ctpd", codec=codec, **rate)
    result = subprocess.run(
        [sys.executable, "-c", PIXEL_ARRAY, str(out)], capture_output=True, text=True, check=True
    )
    views = json.loads(result.stdout)
    assert {uid for uid, _ in views} == {syntax}
    decoded = np.array([pixels for _, pixels in views], dtype=np.int64)
    assert np.abs(decoded - original.projections).max() <= (max_error or 0)


@pytest.mark.parametrize("codec", ["jpegls", "htj2k"])
def test_a_large_compressed_series_is_read_view_by_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    """Above the lazy threshold a compressed series is read lazily: each view's frame is
    decoded again when it is read (not its compressed bytes taken as pixels)."""
    from ctpress.io import LazyViews, _lazy

    original = scan()
    out = tmp_path / "series"
    ctpress.convert(original, out, output_format="dicom-ctpd", codec=codec, lossless=True)
    monkeypatch.setattr(_lazy, "LAZY_BYTES", 0)
    back = ctpress.read_scan(out)
    assert isinstance(back.projections, LazyViews)
    assert np.array_equal(back.projections[1:3], original.projections[1:3])
    assert np.array_equal(back.array(), original.projections)


def test_htj2k_frames_decode_with_openjpeg(tmp_path: Path) -> None:
    """A second HTJ2K implementation (OpenJPEG, through Pillow, which matplotlib brings)
    decodes the frames bit-exact: they are standard codestreams, not OpenJPH's dialect."""
    image_module = pytest.importorskip("PIL.Image")
    original = scan()
    out = tmp_path / "series"
    ctpress.convert(original, out, output_format="dicom-ctpd", codec="htj2k")
    for path in out.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
        image = np.asarray(image_module.open(BytesIO(frame)))
        assert np.array_equal(image.T, original.projections[int(ds.InstanceNumber) - 1])


def test_near_lossless_is_within_the_bound_and_flagged_lossy(tmp_path: Path) -> None:
    original = scan()
    out = tmp_path / "near"
    ctpress.convert(original, out, output_format="dicom-ctpd", max_error=3)
    views = pydicom_views(out, JPEGLSNearLossless)
    error = np.abs(views.astype(np.int64) - original.projections)
    assert 0 < error.max() <= 3
    for path in out.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_14495_1"
        frame_bytes = len(next(generate_frames(ds.PixelData, number_of_frames=1)))
        assert float(ds.LossyImageCompressionRatio) == pytest.approx(
            ROWS * COLS * 2 / frame_bytes, rel=1e-3
        )
    assert np.array_equal(ctpress.read_scan(out).projections, views)


def test_a_read_series_converts_with_its_headers(tmp_path: Path) -> None:
    """A series read from implicit VR files keeps its tags (re-encoded as explicit VR)."""
    original = scan()
    assert original.geometry is not None
    make_ctpd_series(tmp_path / "in", original.projections, original.geometry, implicit_vr=True)
    out = tmp_path / "out"
    assert (
        main(["-q", "convert", str(tmp_path / "in"), str(out), "--output-format", "dicom-ctpd"])
        == 0
    )
    back = ctpress.read_scan(out)
    source = ctpress.read_scan(tmp_path / "in")
    assert np.array_equal(back.projections, original.projections)
    assert back.metadata["dicom_filenames"] == source.metadata["dicom_filenames"]
    assert back.metadata["rescale_slope"] == source.metadata["rescale_slope"]
    assert np.array_equal(back.aux["ffs_axial_shift_mm"], source.aux["ffs_axial_shift_mm"])


@pytest.mark.parametrize(
    ("options", "what"),
    [
        (["--codec", "zstd"], "got codec 'zstd'"),
        (["--codec", "htj2k", "--max-error", "2"], "got max_error with codec 'htj2k'"),
        (["--max-error", "2.5"], "got max_error 2.5"),
        (["--max-error", "300"], "got max_error 300"),
        (["--psnr", "60"], "psnr do not apply"),
        (["--chunk-views", "2"], "chunk_views do not apply"),
    ],
)
def test_unsupported_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], what: str
) -> None:
    source = tmp_path / "scan.npz"
    write_scan(scan(), source)
    args = ["convert", str(source), str(tmp_path / "out"), "--output-format", "dicom-ctpd"]
    assert main(args + options) == 2
    err = capsys.readouterr().err
    assert "DICOM-CT-PD output supports" in err and what in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_float_projections_are_refused(tmp_path: Path) -> None:
    floats = Scan(scan().projections.astype(np.float32), geometry=scan().geometry)
    with pytest.raises(InputError, match="stores uint16 values"):
        ctpress.convert(floats, tmp_path / "out", output_format="dicom-ctpd")


def test_frame_of_the_wrong_size_is_corrupt(tmp_path: Path) -> None:
    out = tmp_path / "series"
    ctpress.convert(scan(), out, output_format="dicom-ctpd", codec="htj2k")
    path = next(out.glob("*.dcm"))
    ds = pydicom.dcmread(path)
    ds.Rows = COLS + 1
    ds.save_as(path)
    with pytest.raises(CorruptFileError, match=r"htj2k image is 64 x 16, but the file declares 65"):
        ctpress.read_scan(out)


@pytest.mark.parametrize("codec", ["jpegls", "htj2k"])
def test_truncated_frame_is_corrupt(tmp_path: Path, codec: str) -> None:
    out = tmp_path / "series"
    ctpress.convert(scan(), out, output_format="dicom-ctpd", codec=codec)
    path = next(out.glob("*.dcm"))
    ds = pydicom.dcmread(path)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds.save_as(path)
    with pytest.raises(CorruptFileError, match=rf"{path.name}: the {codec} frame ends without"):
        ctpress.read_scan(out)


def test_reads_lossy_htj2k_written_elsewhere(tmp_path: Path) -> None:
    """A lossy HTJ2K (.203) series, which convert does not write, reads back decoded."""
    original = scan()
    out = tmp_path / "series"
    ctpress.convert(original, out, output_format="dicom-ctpd", codec="htj2k")
    expected = {}
    for path in out.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        view = int(ds.InstanceNumber) - 1
        frame = imagecodecs.htj2k_encode(original.projections[view].T, level=1e-3, reversible=False)
        expected[view] = imagecodecs.htj2k_decode(frame).T
        ds.PixelData = encapsulate([bytes(frame)])
        ds.file_meta.TransferSyntaxUID = HTJ2K
        ds.save_as(path)
    back = ctpress.read_scan(out).projections
    assert np.array_equal(back, np.stack([expected[v] for v in range(N)]))
    assert not np.array_equal(back, original.projections)
