"""Golden files: .ctpz files written by earlier ctpress versions decode to the recorded
checksums, bit for bit (``tests/data/golden``; how they were made: ``make_golden.py``
there).  Every codec added later joins with files of its own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import ctpress

GOLDEN = Path(__file__).parent / "data" / "golden"
CHECKSUMS: dict[str, dict] = json.loads((GOLDEN / "checksums.json").read_text())


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(CHECKSUMS))
def test_golden_file_decodes_to_its_checksums(name: str) -> None:
    expected = CHECKSUMS[name]
    scan = ctpress.decompress(GOLDEN / name)
    assert list(scan.projections.shape) == expected["shape"]
    assert scan.projections.dtype.str == expected["dtype"]
    arrays = {"projections": scan.projections, **scan.aux}
    assert {k: _sha256(a) for k, a in sorted(arrays.items())} == expected["sha256"]
    assert (None if scan.geometry is None else scan.geometry.to_dict()) == expected["geometry"]
    assert scan.metadata == expected["metadata"]
    with ctpress.open(GOLDEN / name) as f:  # a view range inside a chunk and across chunks
        np.testing.assert_array_equal(f[1:3], scan.projections[1:3])
        np.testing.assert_array_equal(f[3:6], scan.projections[3:6])


def test_every_registered_codec_has_golden_files() -> None:
    covered = {entry["codec"] for entry in CHECKSUMS.values()}
    registered = {cls.codec_id for cls in ctpress.codecs.list_codecs()}
    assert registered <= covered, f"codecs without golden files: {registered - covered}"
