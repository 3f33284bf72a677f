"""``ctpress train`` end to end on tiny data: weights with provenance that install and code."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import ctpress
from ctpress.cli import main
from ctpress.learned import zoo


def tiny_projections(tmp_path, shape, seed: int = 0, name: str = "tiny_scan"):
    """A smooth uint16 scan of ``shape`` saved as ``projections/NAME.npy`` under
    ``tmp_path`` (a data root for ``ctpress train --data``); returns the views."""
    rng = np.random.default_rng(seed)
    (tmp_path / "projections").mkdir(exist_ok=True)
    views = (20000 + np.cumsum(rng.integers(-50, 50, shape), axis=-1)).astype(np.uint16)
    np.save(tmp_path / "projections" / f"{name}.npy", views)
    return views


def train_tiny(tmp_path, method: str, out_name: str, steps: int, seed: int):
    """``ctpress train METHOD`` on the data root ``tmp_path``; returns the weights path."""
    out = tmp_path / out_name
    args = ["-q", "train", method, "--data", str(tmp_path), "--out", str(out)]
    assert main([*args, "--steps", str(steps), "--seed", str(seed)]) == 0
    return out


@pytest.mark.parametrize("method", ["hyperprior", "vqvae"])
def test_train_writes_installable_weights(method, tmp_path, monkeypatch):
    tiny_projections(tmp_path, (12, 32, 64))
    out = train_tiny(tmp_path, method, "w.safetensors", steps=2, seed=1)
    model, meta = zoo.load_weights(out.read_bytes())
    assert model.method == method
    assert meta["steps"] == 2 and meta["seed"] == 1 and meta["rate_point"] == 0
    assert "--steps 2 --seed 1" in meta["reproduce"]
    assert meta["train_data"] == ["tiny_scan"]
    held_out = meta["held_out"]["tiny_scan[held-out views]"]  # the last third of the views
    assert held_out["bits_per_value"] > 0

    weights = tmp_path / "zoo"
    weights.mkdir()
    monkeypatch.setenv(zoo.ENV_DIR, str(weights))
    zoo.clear_cache()
    try:
        record = zoo.install(out)
        manifest = json.loads((weights / zoo.MANIFEST).read_text())
        assert manifest["methods"][method][0]["sha256"] == record["sha256"]
        x = np.random.default_rng(0).integers(1000, 3000, (4, 16, 40)).astype(np.uint16)
        data = ctpress.compress(x, codec=method, max_error=3)
        assert np.abs(ctpress.decompress(data).projections.astype(int) - x).max() <= 3
    finally:
        monkeypatch.delenv(zoo.ENV_DIR)
        zoo.clear_cache()


def test_train_siren_writes_an_installable_initialisation(tmp_path, monkeypatch):
    views = tiny_projections(tmp_path, (30, 8, 32))
    out = train_tiny(tmp_path, "siren", "init.safetensors", steps=3, seed=2)
    meta = json.loads(zoo._safetensors_metadata(out.read_bytes())["metadata"])
    assert meta["method"] == "siren" and meta["steps"] == 3 and meta["seed"] == 2
    assert meta["config"]["width"] == 16 and "--steps 3 --seed 2" in meta["reproduce"]
    held = meta["held_out"]["tiny_scan[held-out views]"]
    assert held["psnr_db_meta_init"] > 0 and held["psnr_db_standard_init"] > 0

    weights = tmp_path / "zoo"
    weights.mkdir()
    monkeypatch.setenv(zoo.ENV_DIR, str(weights))
    zoo.clear_cache()
    try:
        zoo.install(out)
        x = views[:12].astype(np.uint16)
        data = ctpress.compress(x, codec="siren", max_error=5, width=16, meta_init=True, steps=30)
        assert np.abs(ctpress.decompress(data).projections.astype(int) - x).max() <= 5
    finally:
        monkeypatch.delenv(zoo.ENV_DIR)
        zoo.clear_cache()


def test_train_convlstm_writes_a_loadable_view_predictor(tmp_path):
    from ctpress.learned.predictor import ViewPredictor

    rng = np.random.default_rng(0)
    (tmp_path / "projections").mkdir()
    cone = 20000 + np.cumsum(rng.integers(-50, 50, (24, 32, 64)), axis=2)
    fan = 3000 + np.cumsum(rng.integers(-20, 20, (24, 300)), axis=1)
    np.save(tmp_path / "projections" / "tiny_cone.npy", cone.astype(np.uint16))
    np.save(tmp_path / "projections" / "tiny_fan.npy", fan.astype(np.uint16))
    out = train_tiny(tmp_path, "convlstm", "convlstm.safetensors", steps=2, seed=1)
    meta = json.loads(zoo._safetensors_metadata(out.read_bytes())["metadata"])
    assert meta["method"] == "convlstm" and meta["steps"] == 2 and meta["seed"] == 1
    assert "--steps 2 --seed 1" in meta["reproduce"]
    held = meta["held_out"]["tiny_cone[held-out views]"]
    assert set(held) >= {"previous_view", "integer", "float"}
    assert held["integer"]["mean_abs_error"] > 0
    predictor = ViewPredictor.from_weights(out.read_bytes(), b"12345678")
    assert predictor.hidden == meta["config"]["hidden"]


def test_train_dvc_fine_tunes_the_p_frame_model_of_a_rate_point(tmp_path, monkeypatch):
    """``ctpress train dvc`` writes a hyperprior of the rate point's architecture with
    its provenance and the held-out BD-rate of its P-frames; installed beside the shipped
    I-frame model, ``--codec dvc`` codes with it and the file names its weights."""
    views = tiny_projections(tmp_path, (12, 32, 64))
    out = train_tiny(tmp_path, "dvc", "dvc.safetensors", steps=2, seed=1)
    model, meta = zoo.load_weights(out.read_bytes())
    hyperprior = zoo.rate_points("hyperprior")[0]
    assert model.config() == hyperprior["config"]
    assert meta["method"] == "dvc" and meta["steps"] == 2 and meta["rate_point"] == 0
    assert hyperprior["sha256"] in meta["initial"] and meta["train_images"] == 7
    held = meta["held_out"]["tiny_scan[held-out views]"]
    assert len(held["initial"]) == len(held["trained"]) == len(held["gains"])
    bits, psnr = np.array(held["trained"]).T  # at increasing gains: fewer bits, lower PSNR
    assert np.all(bits >= 0) and bits[0] > bits[-1] and psnr[0] > psnr[-1] > 0

    weights = tmp_path / "zoo"
    shutil.copytree(zoo.weights_dir(), weights)
    monkeypatch.setenv(zoo.ENV_DIR, str(weights))
    zoo.clear_cache()
    try:
        record = zoo.install(out)
        assert zoo.rate_points("dvc")[0]["sha256"] == record["sha256"]
        x = views[:6].astype(np.uint16)
        data = ctpress.compress(x, codec="dvc", rate_point=0, max_error=3)
        assert np.abs(ctpress.decompress(data).projections.astype(int) - x).max() <= 3
        assert bytes.fromhex(record["sha256"])[:8] in data
    finally:
        monkeypatch.delenv(zoo.ENV_DIR)
        zoo.clear_cache()
