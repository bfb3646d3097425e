"""Run folders: fresh, never overwritten, checkpointed atomically, resumed only when consistent."""

import dataclasses
import json
import shlex
import subprocess
import sys

import pytest

from swsl_cli.runner import runs
from swsl_cli.runner.config import Config


def test_new_runs_never_reuse_a_folder(tmp_path):
    config = Config(logdir=str(tmp_path / "tb"), seed=4)
    first, first_config = runs.create(runs.with_seed(config), now=0)
    second, _ = runs.create(runs.with_seed(config), now=0)  # same flags, same second
    assert first.root != second.root and second.root.name == first.root.name + "-2"
    assert first.root.name.startswith("sws-g2x2_f24-48_e10_")
    assert json.loads(first.config.read_text())["seed"] == 4
    assert first_config.run_name == first.root.name


def test_seed_is_drawn_and_recorded_when_missing(tmp_path):
    run, config = runs.create(runs.with_seed(Config(logdir=str(tmp_path))))
    assert isinstance(config.seed, int) and config.deterministic is False
    saved = json.loads(run.config.read_text())
    assert saved["seed"] == config.seed and saved["deterministic"] is False
    _, seeded = runs.create(runs.with_seed(Config(logdir=str(tmp_path), seed=5)))
    assert seeded.deterministic is True


def test_named_run_that_exists_is_refused_and_untouched(tmp_path):
    config = Config(logdir=str(tmp_path), run_name="mine")
    run, _ = runs.create(runs.with_seed(config))
    (run.root / "precious.txt").write_text("keep")
    with pytest.raises(runs.RunError, match="already exists; pass --resume"):
        runs.create(runs.with_seed(config))
    assert (run.root / "precious.txt").read_text() == "keep"


def test_logdir_that_is_a_file_or_below_one(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(runs.RunError, match="is a file"):
        runs.create(runs.with_seed(Config(logdir=str(tmp_path / "file"))))
    with pytest.raises(runs.RunError, match="cannot create --logdir"):
        runs.create(runs.with_seed(Config(logdir=str(tmp_path / "file" / "sub"))))


def _write_model(text):
    return lambda path: path.write_text(text)


def test_checkpoint_commits_model_and_state_together_and_keeps_only_the_newest(tmp_path):
    run, _ = runs.create(runs.with_seed(Config(logdir=str(tmp_path), run_name="r", seed=1)))
    assert run.latest_checkpoint() is None
    run.save_checkpoint(_write_model("one"), {"epoch": 1, "epochs": [{"epoch": 1}]})
    run.save_checkpoint(_write_model("two"), {"epoch": 2, "epochs": [{"epoch": 1}, {"epoch": 2}]})
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch-2"]
    latest = run.latest_checkpoint()
    assert latest.epoch == 2 and latest.model.read_text() == "two"
    assert len(latest.state["model_sha256"]) == 64


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_partial_folder(tmp_path):
    run, _ = runs.create(runs.with_seed(Config(logdir=str(tmp_path), run_name="r", seed=1)))
    run.save_checkpoint(_write_model("one"), {"epoch": 1, "epochs": []})

    def disk_full(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(runs.RunError, match=r"cannot write .*epoch-2: No space left on device"):
        run.save_checkpoint(disk_full, {"epoch": 2, "epochs": []})
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch-1"]
    assert run.latest_checkpoint().model.read_text() == "one"


def test_damaged_checkpoints_are_refused_in_one_line(tmp_path):
    run, _ = runs.create(runs.with_seed(Config(logdir=str(tmp_path), run_name="r", seed=1)))
    checkpoint = run.save_checkpoint(_write_model("weights"), {"epoch": 1, "epochs": []})
    checkpoint.model.write_text("weigh")  # truncated
    with pytest.raises(runs.RunError, match="is missing or damaged"):
        run.latest_checkpoint()
    checkpoint.model.unlink()
    with pytest.raises(runs.RunError, match="is missing or damaged"):
        run.latest_checkpoint()
    (checkpoint.folder / "state.json").write_text("{garbage")
    with pytest.raises(runs.RunError, match="checkpoint state .* is damaged"):
        run.latest_checkpoint()


def test_partial_files_of_a_killed_process_are_removed(tmp_path):
    run, _ = runs.create(runs.with_seed(Config(logdir=str(tmp_path), run_name="r", seed=1)))
    run.checkpoints.mkdir()
    (run.checkpoints / "partial-123-epoch-3").mkdir()
    (run.root / "partial-123-model.keras").write_text("half")
    run.kernel_images.mkdir()
    (run.kernel_images / "partial-123-sws1_kcp.png").write_text("half")
    run.remove_partial_files()
    assert not list(run.root.rglob("partial-*"))
    assert run.config.is_file()


def test_second_lock_on_a_run_is_refused_naming_the_holder(tmp_path):
    run, _ = runs.create(runs.with_seed(Config(logdir=str(tmp_path), run_name="r", seed=1)))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from pathlib import Path\n"
         "from swsl_cli.runner.runs import RunDir\n"
         f"with RunDir(Path({str(run.root)!r})).lock():\n"
         "    print('locked', flush=True)\n"
         "    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunError, match=f"being trained by process {holder.pid} on "):
            with run.lock():
                pass
    finally:
        holder.communicate("", timeout=60)
    with run.lock():  # free again once the holder exits
        assert f"process {__import__('os').getpid()}" in run.lock_file.read_text()
    assert not run.lock_file.exists()


def resume(config, given):
    return runs.resume(runs.find_run(config), config, given)


def _saved_run(tmp_path, epoch=1, status="interrupted", **flags):
    config = Config(logdir=str(tmp_path), run_name="r", seed=9, n_epochs=3, **flags)
    run, _ = runs.create(runs.with_seed(config))
    run.save_checkpoint(_write_model("model"), {"epoch": epoch, "epochs": []})
    run.write_metrics({"status": status, "test_accuracy": 0.5})
    return run


def test_resume_restores_every_saved_setting(tmp_path):
    _saved_run(
        tmp_path,
        centroid_grid=(3, 3),
        centroids_trainable=True,
        data_dir="/data/mnist",
        color_coding=True,
        log_verbosity=2,
        batch_size=32,
    )
    resumed = resume(Config(logdir=str(tmp_path), resume=True), frozenset({"resume"}))
    config = resumed.config
    assert resumed.run.root.name == "r" and resumed.checkpoint.epoch == 1
    assert config.centroid_grid == (3, 3) and config.centroids_trainable and config.seed == 9
    assert (config.data_dir, config.n_epochs, config.color_coding) == ("/data/mnist", 3, True)
    assert (config.log_verbosity, config.batch_size, config.resume) == (2, 32, True)


def test_resume_takes_a_larger_n_epochs_and_another_data_dir(tmp_path):
    _saved_run(tmp_path, data_dir="/data/mnist")
    config = Config(
        logdir=str(tmp_path), resume=True, n_epochs=5, data_dir="/elsewhere", quiet=True
    )
    resumed = resume(config, frozenset({"resume", "n_epochs", "data_dir", "quiet"}))
    assert (resumed.config.n_epochs, resumed.config.data_dir, resumed.config.quiet) == (
        5,
        "/elsewhere",
        True,
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        # Given at its default value, still a contradiction of the saved 3x3 run.
        (dict(centroid_grid=(2, 2)), "--centroid_grid 2 2 contradicts the saved run's 3 3"),
        (dict(seed=1), "--seed 1 contradicts the saved run's 9"),
        (dict(batch_size=32), "--batch_size 32 contradicts the saved run's 64"),
        (dict(lr_decay=1.0), "--lr_decay 1.0 contradicts the saved run's 0.75"),
        (dict(precision="float32"), "--precision float32 contradicts the saved run's auto"),
        (dict(color_coding=True), "--color_coding True contradicts the saved run's False"),
        (dict(n_epochs=2), "--n_epochs 2 is fewer than the saved run's 3"),
    ],
)
def test_resume_refuses_contradictions_and_writes_nothing(tmp_path, flags, message):
    run = _saved_run(tmp_path, centroid_grid=(3, 3))
    before = {p: p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    base = Config(logdir=str(tmp_path), run_name="r", resume=True)
    with pytest.raises(runs.RunError, match=message):
        resume(dataclasses.replace(base, **flags), frozenset({"resume", "run_name", *flags}))
    assert {p: p.read_bytes() for p in run.root.rglob("*") if p.is_file()} == before


def test_a_run_saved_before_the_recipe_flags_resumes_with_its_own_training(tmp_path):
    from swsl_cli.runner.cli import parse_command

    run = _saved_run(tmp_path, lr_schedule="exponential", learning_rate=1e-3, ema=0.0)
    saved = json.loads(run.config.read_text())
    for name in ("lr_schedule", "warmup_epochs", "ema"):
        del saved[name]
    run.config.write_text(json.dumps(saved))
    logdir = ["--logdir", str(tmp_path), "--resume"]
    config = resume(*parse_command([*logdir, "--lr_decay", "0.75"])).config
    assert (config.lr_schedule, config.learning_rate, config.lr_decay, config.ema) == (
        "exponential",
        1e-3,
        0.75,
        0.0,
    )
    with pytest.raises(runs.RunError, match="--lr_schedule cosine contradicts the saved run's"):
        resume(*parse_command([*logdir, "--lr_schedule", "cosine"]))


def test_resume_refusals(tmp_path):
    given = frozenset({"resume", "run_name"})
    with pytest.raises(runs.RunError, match="does not exist"):
        resume(Config(logdir=str(tmp_path / "none"), resume=True), frozenset({"resume"}))
    with pytest.raises(runs.RunError, match="no run with a checkpoint"):
        resume(Config(logdir=str(tmp_path), resume=True), frozenset({"resume"}))
    runs.create(runs.with_seed(Config(logdir=str(tmp_path), run_name="fresh")))
    with pytest.raises(runs.RunError, match="no complete epoch"):
        resume(Config(logdir=str(tmp_path), run_name="fresh", resume=True), given)
    with pytest.raises(runs.RunError, match="no run 'other'"):
        resume(Config(logdir=str(tmp_path), run_name="other", resume=True), given)
    (tmp_path / "fresh" / "config.json").write_text("not json")
    with pytest.raises(runs.RunError, match="settings file .* is damaged"):
        resume(Config(logdir=str(tmp_path), run_name="fresh", resume=True), given)
    (tmp_path / "fresh" / "config.json").write_text('{"n_epochs": 3, "colour": 1}')
    with pytest.raises(runs.RunError, match="unknown settings colour"):
        resume(Config(logdir=str(tmp_path), run_name="fresh", resume=True), given)


def test_a_completed_run_resumes_only_to_train_more_epochs(tmp_path):
    _saved_run(tmp_path, epoch=3, status="completed")
    base = Config(logdir=str(tmp_path), run_name="r", resume=True)
    with pytest.raises(runs.RunError, match=r"is complete \(3 epochs, test accuracy 0.5000\)"):
        resume(base, frozenset({"resume", "run_name"}))
    resumed = resume(
        dataclasses.replace(base, n_epochs=4), frozenset({"resume", "run_name", "n_epochs"})
    )
    assert resumed.config.n_epochs == 4 and resumed.checkpoint.epoch == 3


def test_an_unfinished_last_phase_resumes(tmp_path):
    _saved_run(tmp_path, epoch=3, status="finishing")
    resumed = resume(
        Config(logdir=str(tmp_path), run_name="r", resume=True), frozenset({"resume", "run_name"})
    )
    assert resumed.checkpoint.epoch == resumed.config.n_epochs == 3


def test_resume_command_is_shell_quoted(tmp_path):
    logdir = tmp_path / "my runs; $(rm -rf x)"
    command = runs.resume_command(Config(logdir=str(logdir), run_name="it's"))
    assert shlex.split(command) == [
        "swsl-train", "--resume", "--logdir", str(logdir.resolve()), "--run_name", "it's",
    ]  # fmt: skip


def resumable_run(tmp_path, **settings):
    """A run folder with one committed (fake) epoch, as `resume` finds it."""
    config = Config(logdir=str(tmp_path / "tb"), run_name="r", seed=1, n_epochs=2, **settings)
    run, config = runs.create(runs.with_seed(config))
    run.save_checkpoint(_write_model("weights"), {"epoch": 1, "epochs": [{"epoch": 1}]})
    return run, config


OVERRIDES = {
    "n_epochs": 5,
    "data_dir": "/elsewhere/mnist.npz",
    "quiet": True,
    "peer_timeout": 900.0,
}


def test_resume_applies_every_override_it_accepts(tmp_path):
    run, saved = resumable_run(tmp_path)
    moved = tmp_path / "moved"
    run.root.parent.rename(moved)
    command = Config(logdir=str(moved), run_name="r", resume=True, **OVERRIDES)
    given = frozenset({*OVERRIDES, "logdir", "run_name", "resume"})
    assert given == set(runs.RESUME_OVERRIDES)  # each override of the declarations, tested
    resumed = runs.resume(runs.RunDir(moved / "r"), command, given).config
    for name, value in OVERRIDES.items():
        assert getattr(resumed, name) == value != getattr(saved, name), name
    assert (resumed.logdir, resumed.run_name, resumed.resume) == (str(moved), "r", True)
    assert dataclasses.replace(resumed, **{n: getattr(saved, n) for n in given}) == saved


def test_resume_without_overrides_keeps_every_saved_setting(tmp_path):
    run, saved = resumable_run(tmp_path, peer_timeout=12.0, quiet=True, n_filters=(8, 8))
    command = Config(logdir=saved.logdir, run_name="r", resume=True)
    resumed = runs.resume(run, command, frozenset({"logdir", "run_name", "resume"})).config
    assert resumed == dataclasses.replace(saved, resume=True)
    assert (resumed.peer_timeout, resumed.quiet, resumed.n_filters) == (12.0, True, (8, 8))
