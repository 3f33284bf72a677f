"""``dvc``: closed-loop video coding of the views (GOP per chunk, integer motion
compensation, per-view checks)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ctpress
from ctpress import CorruptFileError
from ctpress.codecs import dvc, get_codec
from ctpress.codecs.framing import parse_chunk_header
from ctpress.container import CtpzFile
from ctpress.learned import video

GOLDEN = Path(__file__).parent / "data" / "golden"


def moving_views(n: int = 12, rows: int = 16, cols: int = 96, seed: int = 0) -> np.ndarray:
    """(n, rows, cols) uint16: a smooth profile with an edge moving 0.75 pixel per view,
    a still background and Poisson-like noise, so motion compensation has work to do."""
    rng = np.random.default_rng(seed)
    u = np.arange(cols)[None, None, :]
    t = np.arange(n)[:, None, None]
    moving = 8000 / (1 + np.exp(-(u - 30 - 0.75 * t) / 1.5))
    still = 3000 * np.exp(-(((u - 70) / 6.0) ** 2))
    rows_profile = 1 + 0.1 * np.sin(np.arange(rows) / 3)[None, :, None]
    clean = 10000 + (moving + still) * rows_profile
    return np.clip(clean + rng.normal(0, 15, (n, rows, cols)), 0, 65535).astype(np.uint16)


def test_compensation_is_integer_and_exact() -> None:
    rng = np.random.default_rng(1)
    reference = rng.integers(-(2**25), 2**25, (8, 40)).astype(np.int64)
    still = video.compensate(reference, np.zeros(3, np.int8))
    np.testing.assert_array_equal(still, reference)
    whole = video.compensate(reference, np.full(3, 4, np.int8))  # one pixel to the right
    np.testing.assert_array_equal(whole[:, 1:], reference[:, :-1])
    half = video.compensate(reference, np.full(3, 2, np.int8))
    np.testing.assert_array_equal(half[:, 1:], (reference[:, 1:] + reference[:, :-1] + 1) // 2)
    assert half.dtype == np.int64


def test_block_motion_beats_zero_motion_at_the_same_operating_point() -> None:
    """On a moving edge, at one rate point and gain, motion compensation gives a smaller
    stream and a lower error than zero motion (the ablation the benchmark measures)."""
    views = moving_views()
    results = {}
    for motion in video.MOTIONS:
        session = dvc.DvcSession(views, motion)
        op = (1, 1.0)
        error = session.values - session.prediction(op)
        results[motion] = (session.latent_bits(op), float(np.mean(error**2)))
    (bits_zero, mse_zero), (bits_block, mse_block) = results["zero"], results["block"]
    assert bits_block < bits_zero and mse_block < 1.05 * mse_zero, results


def test_a_decoded_gop_is_what_the_encoder_predicted() -> None:
    views = moving_views()
    codec = get_codec("dvc", mode="bpp", value=1.5)
    chunk, decoded = codec.compress(views)
    np.testing.assert_array_equal(get_codec("dvc").decode(chunk), decoded)


def test_thread_counts_and_instruction_sets_decode_alike(tmp_path: Path) -> None:
    """A GOP encoded with 1 and with 2 torch threads gives the same bytes, which decode
    (on one thread, leaving the process's count as it was) to the same values here and
    in fresh processes with ATEN_CPU_CAPABILITY=default, avx2 and avx512 (the encoder
    computes each view's entropy parameters alone, the decoder a batch of views at
    once)."""
    views = moving_views()
    codec = get_codec("dvc", mode="psnr", value=50.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        chunk = codec.encode(views)
        torch.set_num_threads(2)
        assert codec.encode(views) == chunk
        one = get_codec("dvc").decode(chunk)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    (tmp_path / "chunk").write_bytes(chunk)
    code = (
        "import sys, numpy as np; from ctpress.codecs import get_codec; "
        "np.save(sys.argv[2], get_codec('dvc').decode(open(sys.argv[1], 'rb').read()))"
    )
    for capability in ("default", "avx2", "avx512"):
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
        out = tmp_path / f"{capability}.npy"
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "chunk"), str(out)],
            check=True,
            env=env,
            timeout=300,
        )
        np.testing.assert_array_equal(np.load(out), one)


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "video.ctpz"
    ctpress.compress(moving_views(n=24), path, codec="dvc", bpp=2.0, chunk_views=8)
    return path


def _p_frame_offset(chunk: bytes) -> int:
    """A word three quarters into the GOP stream's range-coded words of a dvc chunk of 8
    views: P-frames (the I-frame comes first and takes less than a quarter)."""
    _, start = parse_chunk_header(chunk)
    stream = start + dvc._SIDES[dvc._VERSION].size + 8 * dvc._CHECK.size
    (n_words,) = struct.unpack_from("<I", chunk, stream)
    return stream + 4 + 4 * (3 * n_words // 4)


def test_a_corrupted_p_frame_is_detected_and_the_other_gops_decode(tmp_path: Path) -> None:
    path = _file(tmp_path)
    with CtpzFile(path) as f:
        entry = f.chunks[1]
        good = f.read_views(0, 8), f.read_views(16, 24)
        codec = f.codec
    raw = bytearray(path.read_bytes())
    chunk = bytearray(raw[entry.offset : entry.offset + entry.length])
    position = _p_frame_offset(bytes(chunk)) + 2
    for bit in range(8):  # the codec's own checks (latents, then the view's grid CRC)
        damaged = bytearray(chunk)
        damaged[position] ^= 1 << bit
        with pytest.raises(CorruptFileError):
            codec.decode(bytes(damaged))
    raw[entry.offset + position] ^= 0x10  # in the file: the container's CRC, then the GOP
    path.write_bytes(bytes(raw))
    with CtpzFile(path) as f:
        with pytest.raises(CorruptFileError):
            f.read_views(8, 16)
        np.testing.assert_array_equal(f.read_views(0, 8), good[0])
        np.testing.assert_array_equal(f.read_views(16, 24), good[1])


def test_a_view_range_decodes_from_its_gop_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path)
    with CtpzFile(path) as f:
        whole = f.read_views()
    decoded_shapes: list[tuple[int, ...]] = []
    decode = dvc.decode_dvc

    def counted(stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        decoded_shapes.append(tuple(shape))
        return decode(stream, shape, work_dtype)

    monkeypatch.setattr(dvc, "decode_dvc", counted)
    with CtpzFile(path) as f:
        part = f.read_views(10, 13)
    np.testing.assert_array_equal(part, whole[10:13])
    assert decoded_shapes == [(8, 16, 96)]  # the second GOP only


def test_the_p_frame_models_share_the_rate_points_of_the_i_frame_models() -> None:
    """The dvc (P-frame) model of each rate point is a hyperprior of the same architecture
    and step as the I-frame model, so one gain means one distortion for every view."""
    from ctpress.learned import zoo

    i_models, p_models = zoo.rate_points("hyperprior"), zoo.rate_points("dvc")
    assert len(p_models) == len(i_models)
    for i_entry, p_entry in zip(i_models, p_models, strict=True):
        assert p_entry["config"] == i_entry["config"]
        assert i_entry["sha256"] in p_entry["initial"]
        assert p_entry["sha256"] != i_entry["sha256"]


def test_streams_name_both_models_and_refuse_unknown_versions() -> None:
    """A version-5 stream carries the tags of its I and P models (versions 1 to 4 decode
    from the golden files); a stream of an unknown version is refused."""
    from ctpress.learned import zoo

    views = moving_views(n=8)
    chunk, _ = get_codec("dvc", mode="bpp", value=1.5).compress(views)
    _, start = parse_chunk_header(chunk)
    side = dvc._SIDES[5].unpack_from(chunk, start)
    assert side[1] == 5
    rate_point = side[2]
    for method, tag in zip((dvc.I_MODEL, dvc.P_MODEL), side[9:11], strict=True):
        assert tag == bytes.fromhex(zoo.rate_points(method)[rate_point]["sha256"])[:8]
    stream = chunk[start:]
    with pytest.raises(CorruptFileError, match="version 1 or 2 or 3 or 4 or 5"):
        dvc.decode_dvc(stream[:4] + b"\x06" + stream[5:], views.shape, "float64")


def test_the_gop_shares_one_stream_with_no_per_view_lengths() -> None:
    """Version 5 stores per view only its 4-byte grid check: the side information, the
    checks and the GOP's one stream make up the whole chunk stream."""
    views = moving_views(n=8)
    session = dvc.DvcSession(views, "block")
    op = (1, 1.0)
    gop = session.coded(op)
    stream = session.pack(op, None, b"")
    assert len(stream) == dvc._SIDES[5].size + 4 * len(views) + len(gop.stream)
    assert gop.i_bits + gop.p_bits == 8 * len(gop.stream)
    np.testing.assert_array_equal(
        dvc.decode_dvc(stream, views.shape, "float64"), session.prediction(op)
    )


def test_a_gop_of_several_batches_decodes_and_batches_of_one_are_version_4(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Version 5 writes a GOP's P-frames in batches of up to BATCH_VIEWS across the views
    (here 16 + 4); decoding it as version 4 (every P-frame on its own) fails its checks,
    and a GOP written with batches of one is a version-4 stream."""
    views = moving_views(n=21, cols=48)
    session = dvc.DvcSession(views, "block")
    op = (1, 1.0)
    stream = session.pack(op, None, b"")
    np.testing.assert_array_equal(
        dvc.decode_dvc(stream, views.shape, "float64"), session.prediction(op)
    )
    with pytest.raises(CorruptFileError):
        dvc.decode_dvc(stream[:4] + b"\x04" + stream[5:], views.shape, "float64")
    monkeypatch.setattr(video, "BATCH_VIEWS", 1)
    as_four = dvc.DvcSession(views, "block").pack(op, None, b"")
    np.testing.assert_array_equal(
        dvc.decode_dvc(as_four[:4] + b"\x04" + as_four[5:], views.shape, "float64"),
        session.prediction(op),
    )


def test_global_motion_is_one_shift_per_view_and_decodes() -> None:
    """The global-shift ablation stores one shift per view, applied to every block, and
    decodes to what the encoder predicted."""
    views = moving_views()
    session = dvc.DvcSession(views, "global")
    op = (1, 1.0)
    gop = session.coded(op)
    assert np.all(gop.moves == gop.moves[:, :1]) and np.any(gop.moves[1:] != 0)
    stream = session.pack(op, None, b"")
    np.testing.assert_array_equal(
        dvc.decode_dvc(stream, views.shape, "float64"), session.prediction(op)
    )


def test_prediction_modes_are_integer_means_and_smoothing_of_the_references() -> None:
    """A mode's prediction is the rounded integer mean of its references, smoothed by
    exact integer binomial filters (edges repeated; mode 0 is the nearest reference as it
    is); the references are compensated by the shifts summed over the views between; on
    still views with fresh noise in every view the encoder averages or smooths most
    blocks' predictions."""
    rng = np.random.default_rng(2)
    refs = [rng.integers(-(2**25), 2**25, (4, 40)).astype(np.int64) for _ in range(3)]
    np.testing.assert_array_equal(video.predicted(refs, np.zeros(3, np.int8)), refs[0])
    edge = np.pad(refs[0], ((0, 0), (1, 1)), mode="edge")
    by_hand = (edge[:, :-2] + 2 * edge[:, 1:-1] + edge[:, 2:] + 2) >> 2
    strong = video.PREDICTION_MODES.index((1, (1, 2, 1)))
    np.testing.assert_array_equal(video.predicted(refs, np.full(3, strong, np.int8)), by_hand)
    mean3 = video.PREDICTION_MODES.index((3, (1,)))
    np.testing.assert_array_equal(
        video.predicted(refs, np.full(3, mean3, np.int8)), (refs[0] + refs[1] + refs[2] + 1) // 3
    )
    decoded = rng.integers(0, 2**20, (3, 2, 48)).astype(np.int64)
    moves = np.array([[0, 0, 0], [1, -2, 4], [3, 0, -1]], dtype=np.int8)
    near, far = video.references(decoded, 2, moves, 4)  # two views before view 2
    np.testing.assert_array_equal(near, video.compensate(decoded[1], moves[2]))
    np.testing.assert_array_equal(far, video.compensate(decoded[0], moves[2] + moves[1]))
    still = np.full((6, 16, 96), 20000.0) + rng.normal(0, 300, (6, 16, 96))
    views = np.clip(still, 0, 65535).astype(np.uint16)
    gop = dvc.DvcSession(views, "zero").coded((2, 0.5))
    assert np.mean(gop.modes[1:] > 0) > 0.5
    assert np.any(gop.modes[2:] >= len(video.PREDICTION_FILTERS))  # several references


def test_smoothing_none_stores_mode_zero_and_decodes() -> None:
    """``smoothing="none"`` (the frame-differences ablation with zero motion) stores
    mode 0 for every block, decodes to the encoder's prediction, and is refused when
    misspelt."""
    views = moving_views(n=8)
    session = dvc.DvcSession(views, "zero", smoothing=False)
    op = (1, 1.0)
    assert not session.coded(op).modes.any()
    stream = session.pack(op, None, b"")
    np.testing.assert_array_equal(
        dvc.decode_dvc(stream, views.shape, "float64"), session.prediction(op)
    )
    assert get_codec("dvc", smoothing="none").get_config()["smoothing"] == "none"
    with pytest.raises(ctpress.InputError, match="smoothing"):
        get_codec("dvc", smoothing="off")


@pytest.mark.parametrize("version", [3, 4, 5])
def test_the_golden_files_of_each_stream_version_hold_that_version(version: int) -> None:
    """The golden files named for stream versions 3 to 5 hold streams of that version
    (their decoding is checked by tests/test_golden.py): every layout stays covered."""
    paths = sorted(GOLDEN.glob(f"v2_dvc_stream{version}_*.ctpz"))
    assert len(paths) == 4
    for path in paths:
        raw = path.read_bytes()
        with CtpzFile(path) as f:
            entries = f.chunks
        for entry in entries:
            chunk = raw[entry.offset : entry.offset + entry.length]
            _, start = parse_chunk_header(chunk)
            assert chunk[start : start + 4] == b"CTDV" and chunk[start + 4] == version
