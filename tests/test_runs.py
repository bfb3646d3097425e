"""Run folders: fresh, never overwritten, and resumed only when consistent."""

import dataclasses
import json

import pytest

from swsl_cli import runs
from swsl_cli.config import Config


def test_new_runs_never_reuse_a_folder(tmp_path):
    config = Config(logdir=str(tmp_path / "tb"), seed=4)
    first, first_config = runs.create(config, now=0)
    second, _ = runs.create(config, now=0)  # same flags, same second
    assert first.root != second.root and second.root.name == first.root.name + "-2"
    assert first.root.name.startswith("sws-g2x2_f24-48_e10_")
    assert json.loads(first.config.read_text())["seed"] == 4
    assert first_config.run_name == first.root.name


def test_seed_is_drawn_and_recorded_when_missing(tmp_path):
    run, config = runs.create(Config(logdir=str(tmp_path)))
    assert isinstance(config.seed, int) and config.deterministic is False
    saved = json.loads(run.config.read_text())
    assert saved["seed"] == config.seed and saved["deterministic"] is False
    _, seeded = runs.create(Config(logdir=str(tmp_path), seed=5))
    assert seeded.deterministic is True


def test_named_run_that_exists_is_refused_and_untouched(tmp_path):
    config = Config(logdir=str(tmp_path), run_name="mine")
    run, _ = runs.create(config)
    (run.root / "precious.txt").write_text("keep")
    with pytest.raises(runs.RunError, match="already exists; pass --resume"):
        runs.create(config)
    assert (run.root / "precious.txt").read_text() == "keep"


def test_logdir_that_is_a_file_or_below_one(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(runs.RunError, match="is a file"):
        runs.create(Config(logdir=str(tmp_path / "file")))
    with pytest.raises(runs.RunError, match="cannot create --logdir"):
        runs.create(Config(logdir=str(tmp_path / "file" / "sub")))


def _saved_run(tmp_path, epoch=1, **flags):
    config = Config(logdir=str(tmp_path), run_name="r", seed=9, n_epochs=3, **flags)
    run, _ = runs.create(config)
    run.checkpoint_model.parent.mkdir()
    run.checkpoint_model.write_bytes(b"model")
    runs.write_json(run.checkpoint_state, {"epoch": epoch, "epochs": []})
    return run


def test_resume_takes_saved_experiment_flags(tmp_path):
    _saved_run(tmp_path, centroid_grid=(3, 3), centroids_trainable=True)
    run, config, state = runs.resume(Config(logdir=str(tmp_path), resume=True, n_epochs=5))
    assert run.root.name == "r" and state["epoch"] == 1
    assert config.centroid_grid == (3, 3) and config.centroids_trainable and config.seed == 9
    assert config.n_epochs == 5


def test_resume_refusals(tmp_path):
    with pytest.raises(runs.RunError, match="does not exist"):
        runs.resume(Config(logdir=str(tmp_path / "none"), resume=True))
    with pytest.raises(runs.RunError, match="no run with a checkpoint"):
        runs.resume(Config(logdir=str(tmp_path), resume=True))
    runs.create(Config(logdir=str(tmp_path), run_name="fresh"))
    with pytest.raises(runs.RunError, match="no complete epoch"):
        runs.resume(Config(logdir=str(tmp_path), run_name="fresh", resume=True))
    with pytest.raises(runs.RunError, match="no run 'other'"):
        runs.resume(Config(logdir=str(tmp_path), run_name="other", resume=True))
    _saved_run(tmp_path, centroid_grid=(3, 3))
    base = Config(logdir=str(tmp_path), run_name="r", resume=True, n_epochs=3)
    with pytest.raises(runs.RunError, match="--centroid_grid \\(4, 4\\) contradicts"):
        runs.resume(dataclasses.replace(base, centroid_grid=(4, 4)))
    with pytest.raises(runs.RunError, match="--seed 1 contradicts"):
        runs.resume(dataclasses.replace(base, seed=1))
    with pytest.raises(runs.RunError, match="already completed 1 epochs"):
        runs.resume(dataclasses.replace(base, n_epochs=1))
