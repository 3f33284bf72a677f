"""Import cost: ``import ctpress``, ``ctpress --help`` and a classical round trip stay free of
torch and the other heavy libraries (each checked in a fresh interpreter); codecs are loaded
lazily from the registry and declare their family."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import ctpress
from ctpress.codecs import Codec, get_codec, get_codec_class, list_codec_ids, register_codec
from ctpress.codecs import registry as codec_registry

#: Libraries that only the code paths using them may import.
HEAVY = (
    "torch torchvision piq scipy h5py zarr blosc2 tqdm matplotlib pydicom tifffile astra odl "
    "skimage"
).split()
LEARNED = {"hyperprior", "vqvae", "siren", "convlstm", "sparse-unet", "dvc"}

_REPORT = f"""
import json, sys
heavy = {HEAVY!r}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))))
"""


def _fresh(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args`` in a fresh interpreter that imports this checkout's ctpress."""
    package_root = str(Path(ctpress.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )


def _heavy_after(code: str, *args: str) -> list[str]:
    """The heavy libraries imported once ``code`` (given ``args``) has run in a fresh
    interpreter."""
    done = _fresh(code + _REPORT, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_import_ctpress_imports_no_heavy_library() -> None:
    code = "import ctpress\nctpress.metrics, ctpress.read_scan, ctpress.codecs.list_codec_ids()\n"
    assert _heavy_after(code) == []


def test_listing_codec_ids_imports_no_codec_module() -> None:
    code = (
        "import sys, ctpress\n"
        "assert 'jpegls' in ctpress.codecs.list_codec_ids()\n"
        "loaded = set(ctpress.codecs.registry.BUILTIN_CODECS.values()) & set(sys.modules)\n"
        "assert not loaded, loaded\n"
        "assert ctpress.codecs.jpegls.__name__ == 'ctpress.codecs.jpegls'\n"  # loaded on use
    )
    assert _heavy_after(code) == []


@pytest.mark.parametrize("codec", ["jpegls", "zstd"])
def test_classical_round_trip_imports_no_heavy_library(codec: str) -> None:
    """A quiet classical round trip loads neither torch nor the libraries it does not use
    (tqdm only draws progress bars; blosc2 only serves its own codec)."""
    code = (
        "import numpy as np, ctpress\n"
        "x = (np.arange(8 * 16 * 24) % 4099).astype(np.uint16).reshape(8, 16, 24)\n"
        f"scan = ctpress.decompress(ctpress.compress(x, codec={codec!r}, lossless=True))\n"
        "np.testing.assert_array_equal(scan.projections, x)\n"
        "assert ctpress.metrics.psnr_db(x, scan.projections) == float('inf')\n"
    )
    assert _heavy_after(code) == []


def test_convlstm_round_trip_imports_no_torch() -> None:
    """The learned predictive codec runs its ConvLSTM in integer numpy: no torch to code
    or decode (numba, its compiler, imports scipy)."""
    code = (
        "import numpy as np, ctpress\n"
        "x = (np.arange(4 * 16 * 24) % 4099).astype(np.uint16).reshape(4, 16, 24)\n"
        "scan = ctpress.decompress(ctpress.compress(x, codec='convlstm', lossless=True))\n"
        "np.testing.assert_array_equal(scan.projections, x)\n"
    )
    assert "torch" not in _heavy_after(code)


@pytest.mark.parametrize("argv", [["--help"], ["compress", "--help"]])
def test_help_exits_0_without_torch(argv: list[str]) -> None:
    code = (
        "import sys\nfrom ctpress.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
    )
    assert _heavy_after(code, *argv) == []
    done = _fresh("import runpy; runpy.run_module('ctpress', run_name='__main__')", *argv)
    assert done.returncode == 0 and "usage: ctpress" in done.stdout, done.stderr
    if argv[0] == "compress":  # the codec choices come from the registry's ids
        assert all(codec_id in " ".join(done.stdout.split()) for codec_id in list_codec_ids())


def test_codecs_declare_their_family() -> None:
    families = {codec_id: get_codec_class(codec_id).family for codec_id in list_codec_ids()}
    assert {c for c, family in families.items() if family == "learned"} == LEARNED
    assert {families[c] for c in families if c not in LEARNED} == {"classical"}
    assert get_codec_class("hyperprior").family == "learned"
    assert get_codec_class("jpegls").family == "classical"


def test_user_codecs_register_and_unknown_ids_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec_registry, "_REGISTRY", dict(codec_registry._REGISTRY))

    @register_codec
    class Raw(Codec):
        """Raw bytes of uint16 arrays."""

        codec_id: ClassVar[str] = "raw-test"
        exact_dtypes: ClassVar[tuple[str, ...]] = ("uint16",)

        def _encode_exact(self, work: np.ndarray) -> bytes:
            return work.tobytes()

        def _decode_stream(
            self, stream: bytes, shape: tuple[int, ...], work_dtype: str
        ) -> np.ndarray:
            return np.frombuffer(stream, work_dtype).reshape(shape)

    x = (np.arange(4 * 5 * 6) * 997 % 65536).astype(np.uint16).reshape(4, 5, 6)
    codec = get_codec("raw-test")
    assert type(codec) is Raw and "raw-test" in list_codec_ids()
    np.testing.assert_array_equal(codec.decode(codec.encode(x)), x)
    with pytest.raises(ctpress.InputError, match=r"unknown codec 'nope'; available: .*jpegls"):
        get_codec_class("nope")
