"""ctpress codecs as numcodecs codecs and Zarr v3 codecs, found through entry points, so
that a store written with them reads back with plain zarr in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from conftest import smooth_stack
from ctpress.codecs import get_codec, list_codec_ids
from ctpress.zarr_codecs import PREFIX, numcodec, zarr_codec


@pytest.mark.parametrize("group", ["numcodecs.codecs", "zarr.codecs"])
def test_every_codec_has_an_entry_point(group: str) -> None:
    names = {e.name for e in entry_points(group=group) if e.name.startswith(PREFIX)}
    assert names == {PREFIX + codec_id for codec_id in list_codec_ids()}
    for point in entry_points(group=group):
        if point.name.startswith(PREFIX):
            loaded = point.load()
            codec_name = getattr(loaded, "codec_id", None) or loaded.codec_name
            assert codec_name == point.name


def _stack() -> np.ndarray:
    return np.clip(smooth_stack((20, 24, 40), seed=2), 0, 65535).astype(np.uint16)


@pytest.mark.parametrize(
    "config",
    [
        {"id": "ctpress.zstd"},
        {"id": "ctpress.jpegls", "mode": "max_error", "value": 2},
        {"id": "ctpress.sz3", "mode": "max_error", "value": 3.0},
    ],
)
def test_numcodecs_round_trip(config: dict[str, object]) -> None:
    x = _stack()
    codec = numcodecs.get_codec(dict(config))
    out = np.empty_like(x)
    decoded = codec.decode(codec.encode(x), out=out)
    assert decoded is out
    bound = float(config.get("value", 0))  # type: ignore[arg-type]
    assert np.abs(out.astype(np.int64) - x).max() <= bound
    rebuilt = numcodecs.get_codec(codec.get_config())
    assert rebuilt.get_config() == codec.get_config()
    assert rebuilt.encode(x) == codec.encode(x)


READ_BACK = """
import json, sys, numpy as np, zarr
array = zarr.open(sys.argv[1], mode="r")
part = array[3:11]
print(json.dumps({"values": part.tolist(), "torch": "torch" in sys.modules,
                  "codecs": [c.to_dict()["name"] for c in array.metadata.codecs]}))
"""


@pytest.mark.parametrize(
    ("codec_id", "rate", "bound"),
    [
        ("jpegls", {"lossless": True}, 0),
        ("zstd", {"lossless": True}, 0),
        ("sz3", {"max_error": 3.0}, 3),
        ("jpeg2000", {"max_error": 4}, 4),
    ],
)
def test_a_store_reads_back_with_plain_zarr_in_a_fresh_process(
    codec_id: str, rate: dict[str, object], bound: int, tmp_path: Path
) -> None:
    x = _stack()
    mode, value = next(iter(rate.items()))
    codec = get_codec(codec_id, mode=mode, value=None if mode == "lossless" else value)
    store = tmp_path / "scan.zarr"
    array = zarr.create_array(
        str(store),
        shape=x.shape,
        chunks=(8, *x.shape[1:]),  # 20 views: the last chunk is padded by zarr
        dtype=x.dtype,
        serializer=zarr_codec(codec),
        compressors=None,
    )
    array[...] = x
    result = subprocess.run(
        [sys.executable, "-c", READ_BACK, str(store)], capture_output=True, text=True, check=True
    )
    answer = json.loads(result.stdout)
    part = np.asarray(answer["values"])
    assert part.shape == (8, *x.shape[1:])
    assert np.abs(part - x[3:11].astype(np.int64)).max() <= bound
    assert answer["codecs"] == [PREFIX + codec_id]
    assert not answer["torch"]


def test_zarr_codec_config_round_trips_and_checks_settings() -> None:
    codec = zarr_codec(get_codec("zstd", level=3))
    assert codec.to_dict() == {
        "name": "ctpress.zstd",
        "configuration": {"mode": "lossless", "value": None, "data_range": None, "level": 3},
    }
    assert type(codec).from_dict(codec.to_dict()) == codec
    with pytest.raises(Exception, match="level"):
        type(codec).from_dict({"name": "ctpress.zstd", "configuration": {"level": "x"}})
    assert numcodec(get_codec("zstd")).get_config()["id"] == "ctpress.zstd"


def test_convert_writes_a_store_read_scan_reads_back(tmp_path: Path, capsys) -> None:
    """``ctpress convert`` writes a Zarr v3 store with the codec, geometry and metadata;
    ``ctpress.read_scan`` reads it back; bad outputs are one-line errors."""
    import ctpress
    from ctpress.cli import main
    from ctpress.scan import Geometry, Scan

    x = _stack()
    geometry = Geometry(kind="parallel", angles_rad=tuple(np.linspace(0, np.pi, 20)))
    source = tmp_path / "scan.npz"
    ctpress.write_scan(Scan(x, geometry, {"units": "counts", "i0": 5e4}), source)
    store = tmp_path / "scan.zarr"
    args = ["-q", "convert", str(source), str(store), "--codec", "sz3", "--max-error", "3"]
    assert main([*args, "--chunk-views", "8"]) == 0
    back = ctpress.read_scan(store)
    assert back.geometry == geometry and back.metadata["i0"] == 5e4
    assert np.abs(back.projections.astype(np.int64) - x).max() <= 3
    array = zarr.open(str(store), mode="r")["projections"]
    assert array.chunks == (8, *x.shape[1:])
    assert [c.to_dict()["name"] for c in array.metadata.codecs] == ["ctpress.sz3"]
    assert main(args) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(source), str(tmp_path / "x.ctpz")]) == 2
    err = capsys.readouterr().err
    assert "convert writes Zarr v3 stores" in err and err.count("\n") == 1
    ctpress.convert(x, tmp_path / "lossless.zarr", codec="jpegls")
    np.testing.assert_array_equal(ctpress.read_scan(tmp_path / "lossless.zarr").projections, x)
