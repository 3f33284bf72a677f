"""Integer-table entropy coding of the learned codecs: round trips and stored tables."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctpress.errors import CorruptFileError
from ctpress.learned import residual, zoo
from ctpress.learned.entropy import ScaleConditional
from ctpress.learned.models.hyperprior import ZERO_BAND, MeanScaleHyperprior
from ctpress.learned.tables import (
    PRECISION,
    NeighbourCoder,
    SymbolReader,
    SymbolWriter,
    TableCoder,
    pack_varints,
    quantise_pmf,
    unpack_varints,
)


def test_quantise_pmf_sums_exactly_and_keeps_every_symbol():
    rng = np.random.default_rng(0)
    pmf = rng.random((5, 40)) ** 8
    pmf[0, :10] = 0
    freqs = quantise_pmf(pmf)
    assert (freqs.sum(axis=1) == 1 << PRECISION).all()
    assert freqs.min() >= 1


def test_varints_round_trip():
    values = np.array([0, 1, 127, 128, 300, 2**35 + 7, 2**62], dtype=np.uint64)
    data = pack_varints(values) + b"tail"
    decoded, used = unpack_varints(data, len(values))
    assert (decoded == values).all()
    assert data[used:] == b"tail"


def test_table_coder_round_trip_with_escapes():
    rng = np.random.default_rng(1)
    lengths = np.array([5, 9, 3])
    freqs = np.concatenate([quantise_pmf(rng.random((1, n)))[0] for n in lengths])
    coder = TableCoder(freqs, np.array([-1, -3, 0]), lengths, escapes=True)
    rows = rng.integers(0, 3, 5000)
    values = rng.integers(-4, 5, 5000)
    values[::97] = rng.integers(-(10**9), 10**9, values[::97].size)  # far outside: escapes
    data = coder.encode(values, rows)
    assert (coder.decode(data, rows) == values).all()
    for damaged in (data[:10], data + b"\x00"):  # truncated; trailing bytes
        with pytest.raises(CorruptFileError):
            coder.decode(damaged, rows)


def test_table_coder_without_escapes_refuses_outside_values():
    coder = TableCoder(np.array([3, 1, 4, 1]), np.array([10]), np.array([4]), escapes=False)
    values = np.array([10, 13, 11, 12, 10])
    assert (coder.decode(coder.encode(values, np.zeros(5)), np.zeros(5)) == values).all()
    with pytest.raises(ValueError):
        coder.encode(np.array([14]), np.zeros(1))


@pytest.mark.parametrize("method", ["hyperprior", "vqvae"])
def test_tables_identical_after_save_and_load(method, tmp_path):
    model, _ = zoo.load_model(method, 0)
    path = tmp_path / "w.safetensors"
    zoo.save_weights(model, path, {"test": True})
    again, meta = zoo.load_weights(path.read_bytes())
    assert meta == {"test": True}
    tables = {k: v for k, v in model.state_dict().items() if "table" in k or "prior_freqs" in k}
    assert tables
    for name, tensor in tables.items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    # and they code to the same bytes
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.random((2, 1, 64, 64))).float()
    a = model.code(model.analyse(x), 1.0).payload
    b = again.code(again.analyse(x), 1.0).payload
    assert a == b


def test_residual_tables_pinned_and_round_trip():
    data = (Path(residual.__file__).parent / "weights" / residual.TABLES_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == residual.TABLES_SHA256
    rng = np.random.default_rng(3)
    q = np.round(rng.laplace(0, 40, (3, 37, 50))).astype(np.int64)
    q[0, :16, :16] = 0
    q[1, 3, 4] = 2**40 - 5
    q[2, 0, 0] = -(2**39)
    stream = residual.encode_residual(q)
    assert (residual.decode_residual(stream, q.shape) == q).all()
    with pytest.raises(CorruptFileError):
        residual.decode_residual(stream[:-3], q.shape)


def test_residual_tokens_invert_exactly():
    u = np.concatenate([np.arange(5000), 2 ** np.arange(4, 41) - 1, 2 ** np.arange(4, 41)])
    u = u.astype(np.uint64)
    token, nbits, raw = residual.tokenize(u)
    assert (residual.detokenize(token, raw) == u).all()
    assert (residual.unpack_bits(residual.pack_bits(raw, nbits), nbits) == raw).all()
    assert token.max() < residual.N_TOKENS


def test_residual_quantiser_bounds():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 65536, 10000).astype(np.float64)
    recon = np.clip(x + rng.integers(-300, 300, 10000), 0, 65535).astype(np.float64)
    for bound in (1, 2.5, 7):
        step = residual.residual_step(bound, integer=True)
        q = residual.quantise(x, recon, step, integer=True)
        assert np.abs(residual.dequantise(recon, q, step) - x).max() <= bound
    xf = rng.random(10000) * 8
    rf = xf + rng.normal(0, 0.1, 10000)
    step = residual.residual_step(1e-3, integer=False)
    q = residual.quantise(xf, rf, step, integer=False)
    assert np.abs(residual.dequantise(rf, q, step) - xf).max() <= 1e-3 * (1 + 1e-9)


def test_residual_tables_are_what_the_documented_builder_makes():
    import safetensors.numpy

    path = Path(residual.__file__).parent / "weights" / residual.TABLES_FILE
    stored = safetensors.numpy.load(path.read_bytes())
    built = residual.build_residual_tables()
    assert np.array_equal(stored["freqs"], built["freqs"])
    assert np.array_equal(stored["scales"], built["scales"])


def test_table_code_lengths_match_the_coded_bytes():
    rng = np.random.default_rng(3)
    lengths = np.array([7, 12, 5])
    freqs = np.concatenate([quantise_pmf(rng.random((1, n)) ** 3)[0] for n in lengths])
    coder = TableCoder(freqs, np.array([-2, -4, 0]), lengths, escapes=True)
    rows = rng.integers(0, 3, 20000)
    values = rng.integers(-3, 4, 20000)
    values[::2001] = 10**6  # a few escapes (their varint bytes are counted as one)
    estimated = coder.bits(values, rows).sum()
    actual = 8 * (len(coder.encode(values, rows)) - 4)  # without the word count
    assert abs(estimated - actual) <= 0.01 * actual + 64


@pytest.mark.parametrize("bias", [1.0, 2.0, 0.5])
def test_index_offset_corrects_a_biased_scale_prediction(bias):
    conditional = ScaleConditional("laplace")
    conditional.update()
    rng = np.random.default_rng(4)
    predicted = np.exp(rng.uniform(np.log(0.5), np.log(20.0), 50000))
    values = np.round(rng.laplace(0.0, bias * predicted)).astype(np.int64)
    index = conditional.indexes(torch.from_numpy(predicted))
    shift, bits = conditional.index_offset(index, values)
    ratio = float(conditional.scale_table[1] / conditional.scale_table[0])
    assert abs(shift - math.log(bias) / math.log(ratio)) <= 1.5
    coder, top = conditional.coder(), conditional.scale_table.numel() - 1
    shifted = np.clip(index + shift, 0, top)
    assert len(coder.encode(values, shifted)) <= len(coder.encode(values, index))
    assert abs(bits - 8 * len(coder.encode(values, shifted))) <= 0.01 * bits + 64


def test_hyperprior_payload_round_trips_with_table_shifts():
    torch.manual_seed(0)
    model = MeanScaleHyperprior(step=0.02)
    model.update()
    rng = np.random.default_rng(5)
    x = torch.from_numpy(np.cumsum(rng.normal(0, 0.01, (2, 1, 48, 80)), axis=-1) + 0.5)
    coded = model.code(model.analyse(x), 1.5)
    decoded = model.decode(coded.payload, (2, 48, 80), 1.5, coded.check)
    assert torch.equal(decoded.latent, coded.latent)
    assert len(model.subbands) == 13  # one table shift per wavelet subband
    with pytest.raises(CorruptFileError):
        model.decode(coded.payload[:-1], (2, 48, 80), 1.5, coded.check)


def test_hyperprior_zeroes_subbands_that_cost_more_than_they_give():
    """A smooth image at a coarse step: the fine subbands are stored as all-zero (a
    shift byte, no symbols) and the payload still decodes to the encoder's latents."""
    torch.manual_seed(0)
    model = MeanScaleHyperprior(step=0.02)
    model.update()
    ramp = torch.linspace(0.2, 0.8, 96, dtype=torch.float64)
    x = (ramp[None, :] * ramp[:, None])[None, None].repeat(2, 1, 1, 1)
    coded = model.code(model.analyse(x), 8.0)
    head = 4 * (2 + len(model.groups))
    z_bytes = int.from_bytes(coded.payload[:4], "little")
    shifts = np.frombuffer(coded.payload[head + z_bytes :][: len(model.subbands)], np.int8)
    assert (shifts == ZERO_BAND).sum() >= 3
    decoded = model.decode(coded.payload, (2, 96, 96), 8.0, coded.check)
    assert torch.equal(decoded.latent, coded.latent)


def test_index_offset_keeps_a_shift_that_is_cheap_to_store():
    """With the cost of storing each shift, the choice stays at the previous shift unless
    moving saves more bits than the change costs."""
    conditional = ScaleConditional("laplace")
    conditional.update()
    rng = np.random.default_rng(6)
    predicted = np.exp(rng.uniform(np.log(0.5), np.log(20.0), 2000))
    values = np.round(rng.laplace(0.0, 2.0 * predicted)).astype(np.int64)
    index = conditional.indexes(torch.from_numpy(predicted))
    best, best_bits = conditional.index_offset(index, values)
    previous = best - 3

    def costly(d: int) -> float:
        return 0.0 if d == previous else 1e6

    assert conditional.index_offset(index, values, shift_bits=costly, start=previous)[0] == (
        previous
    )
    free = conditional.index_offset(index, values, shift_bits=lambda d: 0.0, start=previous)
    assert free == (best, best_bits)


def test_shared_stream_round_trips_many_calls_with_neighbour_contexts():
    """Several coders' calls in one stream (escapes included) and small integers coded
    after their previous values decode call by call; the per-call tables follow the
    previous values, so repeated values cost little."""
    rng = np.random.default_rng(7)
    lengths = np.array([5, 9])
    freqs = np.concatenate([quantise_pmf(rng.random((1, n)))[0] for n in lengths])
    coder = TableCoder(freqs, np.array([-1, -3]), lengths, escapes=True)
    small = NeighbourCoder(-32, 32, first=0, special=ZERO_BAND)
    calls = []
    for _ in range(6):
        rows = rng.integers(0, 2, 300)
        values = rng.integers(-4, 5, 300)
        values[::37] = rng.integers(-(10**6), 10**6, values[::37].size)
        calls.append((rows, values, np.array([3, -2, ZERO_BAND, 30])))
    writer = SymbolWriter()
    for rows, values, shifts in calls:
        writer.put(coder, values, rows)
        writer.put_neighbours(small, "shifts", shifts)
    data = writer.finish()
    reader = SymbolReader(data)
    for rows, values, shifts in calls:
        np.testing.assert_array_equal(reader.take(coder, rows), values)
        np.testing.assert_array_equal(reader.take_neighbours(small, "shifts", 4), shifts)
    reader.finish()
    assert small.bits(3, previous=3) < 2 < small.bits(3, previous=None)
    for value, previous in ((ZERO_BAND, ZERO_BAND), (-32, 5), (32, None), (0, ZERO_BAND)):
        rows = small.rows(None if previous is None else np.array([previous]), 1)
        column = small.symbols(np.array([value]))
        assert small.bits(value, previous) == small.table.bits(column, rows)[0]
    with pytest.raises(ValueError):
        small.bits(33, previous=0)
    with pytest.raises(CorruptFileError):
        SymbolReader(data + b"\x00").finish()


def test_symbol_writer_batches_write_each_call_across_the_images() -> None:
    """Between begin_image and flush the k-th put of every image is one merged call and
    the k-th put_neighbours stays one per image, each image's tables from the image
    before: the reader takes a batch's puts at once; an image that calls differently
    is refused."""
    rng = np.random.default_rng(5)
    coder = TableCoder(quantise_pmf(rng.random((3, 9))).ravel(), np.full(3, -4),
                       np.full(3, 9), escapes=True)  # fmt: skip
    small = NeighbourCoder(-32, 32, first=0, special=ZERO_BAND)
    images = [(rng.integers(0, 3, 50), rng.integers(-6, 7, 50), rng.integers(-3, 4, 4))
              for _ in range(5)]  # fmt: skip
    writer = SymbolWriter()
    for batch in (images[:1], images[1:]):
        for rows, values, shifts in batch:
            writer.begin_image()
            writer.put_neighbours(small, "shifts", shifts)
            writer.put(coder, values, rows)
        np.testing.assert_array_equal(writer.previous("shifts"), batch[-1][2])  # held
        writer.flush()
    reader = SymbolReader(writer.finish())
    for batch in (images[:1], images[1:]):
        for _, _, shifts in batch:
            np.testing.assert_array_equal(reader.take_neighbours(small, "shifts", 4), shifts)
        merged = reader.take(coder, np.concatenate([rows for rows, _, _ in batch]))
        np.testing.assert_array_equal(merged, np.concatenate([v for _, v, _ in batch]))
    reader.finish()
    for other in ([], [(small, "shifts", images[0][2])]):  # fewer calls, another kind
        writer.begin_image()
        writer.put(coder, images[0][1], images[0][0])
        writer.begin_image()
        for call in other:
            writer.put_neighbours(*call)
        with pytest.raises(ValueError, match="different sequences"):
            writer.flush()
