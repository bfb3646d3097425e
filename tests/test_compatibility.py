"""Runs and models saved by earlier versions load and resume with today's code."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import swsl_cli.layers  # noqa: F401  (registers the layers, as a user's script does)
from swsl_cli.runner import compare, train
from swsl_cli.runner.config import Config

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VERSIONS = ["0.2.0", "0.3.1"]


@pytest.fixture(params=VERSIONS)
def old_run(request, tmp_path):
    """A copy of a run folder written by an earlier version, and the data it trained on."""
    logdir = tmp_path / f"runs-{request.param}"
    shutil.copytree(FIXTURES / f"runs-{request.param}", logdir)
    shutil.copy(FIXTURES / "tiny.npz", tmp_path / "tiny.npz")
    return request.param, logdir, tmp_path / "tiny.npz"


def test_an_old_model_loads_and_predicts(old_run):
    _, logdir, npz = old_run
    images = np.load(npz)["x_test"][..., None]
    for path in (
        logdir / "r" / "model.keras",
        logdir / "r" / "checkpoints" / "epoch-1" / "model.keras",
    ):
        model = keras.models.load_model(path)
        probabilities = keras.ops.convert_to_numpy(model(images, training=False))
        assert probabilities.shape == (32, 10)
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_an_old_run_resumes_and_is_extended(old_run):
    version, logdir, npz = old_run
    before = json.loads((logdir / "r" / "metrics.json").read_text())
    config = Config(logdir=str(logdir), run_name="r", resume=True, n_epochs=2, data_dir=str(npz))
    assert (
        train.run(config, frozenset({"logdir", "run_name", "resume", "n_epochs", "data_dir"})) == 0
    )
    after = json.loads((logdir / "r" / "metrics.json").read_text())
    assert after["status"] == "completed"
    assert [epoch["epoch"] for epoch in after["epochs"]] == [1, 2]
    assert after["epochs"][0] == before["epochs"][0]  # the old epoch is kept as it was
    assert after["flags"]["n_epochs"] == 2 and after["flags"]["seed"] == 0
    assert after["parameters"]["total"] == before["parameters"]["total"]
    saved = json.loads((logdir / "r" / "config.json").read_text())
    assert saved["data_dir"] == str(npz) and saved["n_filters"] == [1, 1]


def test_old_runs_are_listed_by_compare(old_run):
    _, logdir, _ = old_run
    (row,) = compare.collect(logdir, warn=pytest.fail)
    assert (row.name, row.layer, row.centroids, row.status) == ("r", "sws", "2x2", "completed")
    assert row.epochs_done == 1 and row.parameters == 37162
