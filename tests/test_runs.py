"""Run folders: fresh, never overwritten, checkpointed atomically, resumed only when consistent."""

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

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
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    for check in (runs.check_new_run, lambda config: runs.create(runs.with_seed(config))):
        with pytest.raises(runs.RunError, match="is a symbolic link that leads to no folder"):
            check(Config(logdir=str(tmp_path / "loop")))


def _write_model(text):
    return lambda path: path.write_text(text)


def state(epoch, **extra):
    """A checkpoint's state as `EpochRecorder` records it (before the model's hash)."""
    return {"epoch": epoch, "epochs": [{"epoch": n, "loss": 1.0 / n} for n in range(1, epoch + 1)]}


def new_run(tmp_path, name="r", **flags):
    config = runs.with_seed(Config(logdir=str(tmp_path), run_name=name, seed=1, **flags))
    return runs.create(config)


def test_checkpoint_commits_model_and_state_together_and_keeps_the_two_newest(tmp_path):
    run, config = new_run(tmp_path)
    assert run.latest_checkpoint() is None
    for epoch, text in enumerate(("one", "two", "three"), 1):
        run.save_checkpoint(_write_model(text), state(epoch))
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch-2", "epoch-3"]
    latest = run.latest_checkpoint()
    assert latest.epoch == 3 and latest.model.read_text() == "three"
    assert len(latest.state["model_sha256"]) == 64


def test_a_commit_deletes_nothing_it_did_not_write(tmp_path):
    run, _ = new_run(tmp_path)
    run.save_checkpoint(_write_model("one"), state(1))
    backup = run.checkpoints / "my-backup-of-epoch-1"
    shutil.copytree(run.checkpoints / "epoch-1", backup)
    (run.checkpoints / "notes.txt").write_text("mine")
    for epoch in (2, 3, 4):
        run.save_checkpoint(_write_model(str(epoch)), state(epoch))
    assert (backup / "model.keras").read_text() == "one"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "epoch-3", "epoch-4", "my-backup-of-epoch-1", "notes.txt",
    ]  # fmt: skip


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_partial_folder(tmp_path):
    run, _ = new_run(tmp_path)
    run.save_checkpoint(_write_model("one"), state(1))

    def disk_full(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(runs.RunError, match=r"cannot write .*epoch-2: No space left on device"):
        run.save_checkpoint(disk_full, state(2))
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch-1"]
    assert run.latest_checkpoint().model.read_text() == "one"


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run, config = new_run(tmp_path)
    run.save_checkpoint(_write_model("one"), state(1))
    newest = run.save_checkpoint(_write_model("weights"), state(2))
    newest.model.write_text("weigh")  # truncated
    checkpoint, notes = run.usable_checkpoint(config)
    assert checkpoint.epoch == 1
    assert notes == [
        f"checkpoint {newest.model} is missing or damaged (its SHA-256 does not match "
        "state.json); skipped, resuming from epoch-1"
    ]


def test_damaged_checkpoints_are_refused_in_one_line_naming_the_file(tmp_path):
    run, config = new_run(tmp_path)
    checkpoint = run.save_checkpoint(_write_model("weights"), state(1))
    checkpoint.model.write_text("weigh")  # truncated
    with pytest.raises(runs.RunError, match="is missing or damaged.*cannot be resumed"):
        run.latest_checkpoint()
    checkpoint.model.unlink()
    with pytest.raises(runs.RunError, match="is missing or damaged"):
        run.latest_checkpoint()
    (checkpoint.folder / "state.json").write_text("{garbage")
    with pytest.raises(runs.RunError, match="checkpoint state .*state.json is damaged") as error:
        run.latest_checkpoint()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda s: s.update(epoch=1), "says epoch 1, not 2 as its folder's name"),
        (lambda s: s.update(epoch="abc"), 'says epoch "abc", not 2'),
        (lambda s: s.update(epoch=True), "says epoch true, not 2"),
        (lambda s: s.pop("epochs"), "lists no epochs, not 2"),
        (lambda s: s.update(epochs=["x", "y"]), "holds a damaged entry for epoch 1"),
        (
            lambda s: s["epochs"][1].update(loss="low"),
            "holds a value that is not a number in epoch 2",
        ),
        (lambda s: s.pop("model_sha256"), "lacks the model's SHA-256"),
        (lambda s: s.update(data_fingerprint=12345), "holds a data fingerprint that is not text"),
        (
            lambda s: s.update(global_batch="64"),
            "holds a global batch that is not a positive integer",
        ),
        (lambda s: s.update(architecture=[]), "holds a damaged architecture record"),
    ],
)
def test_edited_checkpoint_state_is_skipped_for_the_epoch_before(tmp_path, edit, problem):
    run, config = new_run(tmp_path)
    run.save_checkpoint(_write_model("one"), state(1))
    newest = run.save_checkpoint(_write_model("two"), state(2))
    edited = json.loads((newest.folder / "state.json").read_text())
    edit(edited)
    (newest.folder / "state.json").write_text(json.dumps(edited))
    checkpoint, [note] = run.usable_checkpoint(config)
    assert checkpoint.epoch == 1 and checkpoint.model.read_text() == "one"
    assert note.startswith(f"checkpoint state {newest.folder / 'state.json'} {problem}")
    assert note.endswith("; skipped, resuming from epoch-1")


def test_a_stray_epoch_folder_is_skipped(tmp_path):
    run, config = new_run(tmp_path, n_epochs=3)
    run.save_checkpoint(_write_model("one"), state(1))
    shutil.copytree(run.checkpoints / "epoch-1", run.checkpoints / "epoch-999")
    checkpoint, [note] = run.usable_checkpoint(config)
    assert checkpoint.epoch == 1 and "epoch-999/state.json says epoch 1, not 999" in note
    # Consistent with its folder's name, but beyond the run's epochs: still not this run's.
    stray = json.loads((run.checkpoints / "epoch-999" / "state.json").read_text())
    stray.update(state(999), model_sha256=stray["model_sha256"])
    (run.checkpoints / "epoch-999" / "state.json").write_text(json.dumps(stray))
    checkpoint, [note] = run.usable_checkpoint(config)
    assert checkpoint.epoch == 1 and "is epoch 999 of a run of 3 epochs" in note


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    run, config = new_run(tmp_path, n_filters=(24, 48))
    other = dataclasses.replace(config, n_filters=(8, 8))
    architecture = runs.architecture(other, 89882)
    run.save_checkpoint(_write_model("small"), {**state(1), "architecture": architecture})
    with pytest.raises(runs.RunError, match="saved by a run with other network settings"):
        run.usable_checkpoint(config)
    # What shapes the network: a centroid grid means nothing to --layer conv.
    conv = dataclasses.replace(config, layer="conv")
    assert runs.architecture_settings(conv) == runs.architecture_settings(
        dataclasses.replace(conv, centroid_grid=(3, 3))
    )
    assert runs.architecture_settings(config) != runs.architecture_settings(other)
    own = run.save_checkpoint(_write_model("own"), {**state(2), "architecture": {
        **runs.architecture(config, 383290)}})  # fmt: skip
    runs.check_restored(own, 383290)
    with pytest.raises(
        runs.ForeignCheckpoint, match="network of 89,882 parameters, not the 383,290"
    ):
        runs.check_restored(own, 89882)
    # A checkpoint from before the record: the run's metrics.json says the count.
    old = runs.Checkpoint(own.folder, state(2), run_parameters=383290)
    runs.check_restored(old, 383290)
    with pytest.raises(runs.ForeignCheckpoint):
        runs.check_restored(old, 89882)
    runs.check_restored(runs.Checkpoint(own.folder, state(2)), 89882)  # nothing to compare


def in_thread(call):
    """`call()`'s result or exception, from a thread given 60 s: a read that blocks (a named
    pipe opened for reading waits for a writer) fails the test instead of hanging it."""
    result = []
    thread = threading.Thread(target=lambda: result.append(_outcome(call)), daemon=True)
    thread.start()
    thread.join(60)
    assert result, f"{call} blocked"
    return result[0]


def _outcome(call):
    try:
        return call()
    except Exception as error:  # noqa: BLE001  (the test inspects it)
        return error


@pytest.mark.parametrize("name", ["config.json", "metrics.json", "state.json", "model.keras"])
def test_a_named_pipe_for_any_file_is_refused_without_waiting(tmp_path, name):
    run, config = new_run(tmp_path)
    checkpoint = run.save_checkpoint(_write_model("one"), state(1))
    run.write_metrics({"status": "running"})
    path = {"state.json": checkpoint.folder / name, "model.keras": checkpoint.model}.get(
        name, run.root / name
    )
    path.unlink()
    os.mkfifo(path)
    read = {"config.json": run.read_config, "metrics.json": run.read_metrics}.get(
        name, lambda: run.usable_checkpoint(config)
    )
    error = in_thread(read)
    assert isinstance(error, runs.RunError) and str(path) in str(error), error
    assert "named pipe" in str(error) or "damaged" in str(error)


def test_files_read_back_are_never_read_through_a_link(tmp_path):
    run, config = new_run(tmp_path)
    run.save_checkpoint(_write_model("one"), state(1))
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(dataclasses.replace(config, n_filters=(8, 8)).to_dict()))
    run.config.unlink()
    run.config.symlink_to(elsewhere)
    with pytest.raises(runs.RunError, match="a symbolic link, which is not followed"):
        run.read_config()
    (run.checkpoints / "epoch-1").rename(tmp_path / "epoch-1")
    (run.checkpoints / "epoch-1").symlink_to(tmp_path / "epoch-1")
    assert run.epoch_folders() == []  # a linked epoch folder is not one of the run's
    run.checkpoints.rename(tmp_path / "checkpoints")
    run.checkpoints.symlink_to(tmp_path / "checkpoints")
    with pytest.raises(runs.RunError, match="checkpoints is a symbolic link"):
        run.usable_checkpoint(config)
    with pytest.raises(runs.RunError, match="checkpoints is a symbolic link, not a folder"):
        run.check_folders()
    with pytest.raises(runs.RunError, match="checkpoints is a symbolic link"):
        run.save_checkpoint(_write_model("two"), state(2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-1"]


def test_a_run_folder_whose_own_folders_are_files_is_refused(tmp_path):
    run, config = new_run(tmp_path)
    run.checkpoints.write_text("x")
    with pytest.raises(runs.RunError, match="checkpoints is a file, not a folder swsl-train made"):
        run.check_folders()
    with pytest.raises(runs.RunError, match="checkpoints is a file, not a folder"):
        run.usable_checkpoint(config)


def test_writes_replace_a_planted_link_and_never_write_through_it(tmp_path):
    run, _ = new_run(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for path in (run.metrics, run.model):
        path.symlink_to(victim)
    run.write_metrics({"status": "running"})
    run.save_model(lambda path: path.write_text("model"))
    assert victim.read_text() == "precious"
    assert json.loads(run.metrics.read_text()) == {"status": "running"}
    assert not run.metrics.is_symlink() and run.model.read_text() == "model"
    elsewhere = tmp_path / "pictures"
    elsewhere.mkdir()
    run.kernel_images.symlink_to(elsewhere)
    with pytest.raises(runs.RunError, match="kernel_images is a symbolic link"):
        runs.atomic_write(run.kernel_images / "sws1_kcp.png", lambda path: path.write_text("x"))
    assert list(elsewhere.iterdir()) == []


def test_partial_files_of_a_killed_process_are_removed_and_links_not_followed(tmp_path):
    run, _ = new_run(tmp_path)
    run.checkpoints.mkdir()
    (run.checkpoints / "partial-123-epoch-3").mkdir()
    (run.root / "partial-123-model.keras").write_text("half")
    run.kernel_images.mkdir()
    (run.kernel_images / "partial-123-sws1_kcp.png").write_text("half")
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "folder" / "file").write_text("keep")
    (outside / "file").write_text("keep")
    (run.checkpoints / "partial-9-epoch-2").symlink_to(outside / "folder")
    (run.root / "partial-9-metrics.json").symlink_to(outside / "file")
    run.remove_partial_files()
    assert not [p for p in run.root.rglob("partial-*") if p.exists() or p.is_symlink()]
    assert run.config.is_file()
    assert (outside / "folder" / "file").read_text() == (outside / "file").read_text() == "keep"


def holder_process(root, *, delay_flock=False):
    """A real process that takes `RunDir(root).lock()`: it prints `locked` (or `refused ...`),
    then waits for a line on stdin to release it. With `delay_flock`, it prints `opened`
    once it has opened the run folder and waits for a line before its first flock."""
    script = textwrap.dedent(f"""
        import fcntl, sys
        from pathlib import Path
        from swsl_cli.runner.runs import RunDir, RunError
        if {delay_flock!r}:
            real = fcntl.flock
            def delayed(*args):
                fcntl.flock = real
                print("opened", flush=True)
                sys.stdin.readline()
                return real(*args)
            fcntl.flock = delayed
        try:
            with RunDir(Path({str(root)!r})).lock():
                print("locked", flush=True)
                sys.stdin.readline()
        except RunError as error:
            print("refused", error, flush=True)
    """)
    return subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def tell(process, line=""):
    process.stdin.write(line + "\n")
    process.stdin.flush()


def test_second_lock_on_a_run_is_refused_naming_the_holder(tmp_path):
    run, _ = new_run(tmp_path)
    holder = holder_process(run.root)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunError, match=f"being trained by process {holder.pid} on "):
            with run.lock():
                pass
    finally:
        holder.communicate("\n", timeout=60)
    with run.lock():  # free again once the holder exits
        assert f"process {os.getpid()} on " in run.lock_file.read_text()
    assert run.lock_file.exists()  # never removed: no window in which two processes hold it


def test_deleting_the_lock_file_lets_no_second_process_in(tmp_path):
    run, _ = new_run(tmp_path)
    holder = holder_process(run.root)
    try:
        assert holder.stdout.readline().strip() == "locked"
        run.lock_file.unlink()  # what a user does after a kill -9 left it
        second = holder_process(run.root)
        out, _ = second.communicate("\n", timeout=60)
        assert out.startswith(f"refused run {run.root} is being trained by another process")
    finally:
        holder.communicate("\n", timeout=60)


def test_a_delayed_flock_never_lets_two_processes_hold_the_lock(tmp_path):
    """The window between opening the lock and taking it: a process that opened it while
    the first held it, and locks only after the first released it and a third took it."""
    run, _ = new_run(tmp_path)
    first = holder_process(run.root)
    delayed = holder_process(run.root, delay_flock=True)
    third = None
    try:
        assert first.stdout.readline().strip() == "locked"
        assert delayed.stdout.readline().strip() == "opened"
        first.communicate("\n", timeout=60)  # released
        third = holder_process(run.root)
        assert third.stdout.readline().strip() == "locked"
        tell(delayed)  # now the delayed process takes its lock
        out, _ = delayed.communicate("\n", timeout=60)
        assert out.strip().startswith(
            f"refused run {run.root} is being trained by process {third.pid}"
        )
    finally:
        for process in (first, delayed, third):
            if process is not None and process.poll() is None:
                process.communicate("\n", timeout=60)


def test_a_link_planted_as_the_lock_is_refused_and_its_target_untouched(tmp_path):
    run, _ = new_run(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    run.lock_file.symlink_to(victim)
    with pytest.raises(runs.RunError, match=r"lock is a symbolic link, not the file swsl-train"):
        with run.lock():
            pass
    assert victim.read_text() == "precious"
    run.lock_file.unlink()
    run.lock_file.mkdir()
    with pytest.raises(runs.RunError, match=r"lock is a folder"):
        with run.lock():
            pass


def test_a_read_only_run_folder_is_refused_as_such(tmp_path, monkeypatch):
    run, _ = new_run(tmp_path)
    monkeypatch.setattr(runs.os, "access", lambda path, mode: Path(path) != run.root)
    with pytest.raises(runs.RunError, match=f"run folder {run.root} is read-only"):
        run.check_writable()


def test_what_the_tool_wrote_is_told_from_what_a_user_put_there(tmp_path):
    run, _ = new_run(tmp_path)
    run.write_metrics({"status": "running"})
    for folder in ("train", "validation", "layers", "kernel_images"):
        (run.root / folder).mkdir()
    (run.root / "train" / "events.out.tfevents.1.host.1.v2").write_bytes(b"")
    (run.root / "events.out.tfevents.1.host.0.v2").write_bytes(b"")
    (run.kernel_images / "sws1_kcp.png").write_bytes(b"")
    (run.root / "lock").write_text("process 1 on host\n")
    assert run.foreign_entries() == []
    (run.root / "notes.txt").write_text("mine")
    (run.root / "layers" / "my-plot.png").write_text("mine")
    (run.root / "validation" / "link").symlink_to(tmp_path)
    assert [p.relative_to(run.root) for p in run.foreign_entries()] == [
        Path("layers/my-plot.png"), Path("notes.txt"), Path("validation/link"),
    ]  # fmt: skip
    assert not run.remove_own_files()
    assert sorted(str(p.relative_to(run.root)) for p in run.root.rglob("*")) == [
        "layers", "layers/my-plot.png", "notes.txt", "validation", "validation/link",
    ]  # fmt: skip
    (run.root / "notes.txt").unlink()
    shutil.rmtree(run.root / "layers")
    (run.root / "validation" / "link").unlink()
    assert run.remove_own_files() and not run.root.exists()


def test_a_run_killed_before_its_first_epoch_starts_again_under_its_name(tmp_path):
    run, config = new_run(tmp_path, n_epochs=2)
    run.write_metrics({"status": "running"})  # what a kill -9 leaves
    (run.root / "train").mkdir()
    (run.root / "train" / "events.out.tfevents.1.host.1.v2").write_bytes(b"")
    again = Config(logdir=str(tmp_path), run_name="r", seed=3)
    with contextlib.ExitStack() as stack:
        opened = runs.open_run(again, frozenset({"logdir", "run_name", "seed"}), stack)
        assert opened.restarted and opened.run.root == run.root
        assert "was killed before its first epoch ended" in opened.notes[0]
        with pytest.raises(runs.RunError, match="being trained by process"):
            with runs.RunDir(run.root).lock():
                pass  # held from open_run on
        opened.create(stack)
        assert json.loads(run.config.read_text())["seed"] == 3
        assert sorted(p.name for p in run.root.iterdir()) == ["config.json", "lock"]
    # A folder that holds anything else is no abandoned start: it is refused as before.
    (run.root / "notes.txt").write_text("mine")
    with contextlib.ExitStack() as stack, pytest.raises(runs.RunError, match="already exists"):
        runs.open_run(again, frozenset({"logdir", "run_name", "seed"}), stack)
    # A run that saved an epoch is resumed, not started again.
    (run.root / "notes.txt").unlink()
    run.save_checkpoint(_write_model("one"), state(1))
    with contextlib.ExitStack() as stack, pytest.raises(runs.RunError, match="already exists"):
        runs.open_run(again, frozenset({"logdir", "run_name", "seed"}), stack)


def test_resume_of_a_run_that_saved_no_epoch_starts_it_again(tmp_path):
    run, config = new_run(tmp_path, n_epochs=2, n_filters=(8, 8))
    run.write_metrics({"status": "running"})
    command = Config(logdir=str(tmp_path), run_name="r", resume=True)
    with contextlib.ExitStack() as stack:
        opened = runs.open_run(command, frozenset({"logdir", "run_name", "resume"}), stack)
        assert opened.restarted and opened.config.n_filters == (8, 8)
        assert "it starts again from its first epoch, with its saved settings" in opened.notes[0]
    (run.root / "notes.txt").write_text("mine")
    with pytest.raises(runs.RunError, match=r"holds files swsl-train did not write \(notes.txt\)"):
        runs.resume(run, command, frozenset({"logdir", "run_name", "resume"}))


def test_killed_status_for_a_run_whose_process_is_gone(tmp_path):
    run, _ = new_run(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    host = os.uname().nodename
    run.lock_file.write_text(f"process {gone} on {host}".ljust(127) + "\n")
    assert runs.effective_status(run, "running") == "killed"
    assert runs.effective_status(run, "completed") == "completed"
    run.lock_file.write_text(f"process {os.getpid()} on {host}\n")
    assert runs.effective_status(run, "running") == "running"
    run.lock_file.write_text(f"process {gone} on another-host\n")
    assert runs.effective_status(run, "running") == "running"  # not this machine's to say


def test_resume_never_follows_a_linked_run_folder(tmp_path):
    run, _ = new_run(tmp_path / "real")
    run.save_checkpoint(_write_model("one"), state(1))
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "r").symlink_to(run.root)
    with pytest.raises(
        runs.RunError, match=rf"is a symbolic link.*--logdir {tmp_path / 'real'} --run_name r"
    ):
        runs.find_run(Config(logdir=str(tmp_path / "tb"), run_name="r", resume=True))
    with pytest.raises(runs.RunError, match="no run with a checkpoint"):  # not the newest either
        runs.find_run(Config(logdir=str(tmp_path / "tb"), resume=True))


def resume(config, given):
    return runs.resume(runs.find_run(config), config, given)


def _saved_run(tmp_path, epoch=1, status="interrupted", **flags):
    config = Config(logdir=str(tmp_path), run_name="r", seed=9, n_epochs=3, **flags)
    run, _ = runs.create(runs.with_seed(config))
    run.save_checkpoint(_write_model("model"), state(epoch))
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
    (tmp_path / "fresh" / "notes.txt").write_text("mine")
    with pytest.raises(runs.RunError, match="no complete epoch to resume from, and it holds"):
        resume(Config(logdir=str(tmp_path), run_name="fresh", resume=True), given)
    with pytest.raises(runs.RunError, match="no run 'other'"):
        resume(Config(logdir=str(tmp_path), run_name="other", resume=True), given)
    (tmp_path / "fresh" / "config.json").write_text("not json")
    with pytest.raises(runs.RunError, match="settings file .* is damaged"):
        resume(Config(logdir=str(tmp_path), run_name="fresh", resume=True), given)
    (tmp_path / "fresh" / "config.json").write_text('{"n_epochs": 3, "colour": 1}')
    with pytest.raises(runs.RunError, match="unknown settings colour"):
        resume(Config(logdir=str(tmp_path), run_name="fresh", resume=True), given)
    for text in ('{"n_epochs": "2"}', '{"n_filters": [24]}', '{"seed": 1e400}', "[1]", "9" * 5000):
        (tmp_path / "fresh" / "config.json").write_text(text)
        with pytest.raises(runs.RunError, match="settings file .* is damaged") as error:
            resume(Config(logdir=str(tmp_path), run_name="fresh", resume=True), given)
        assert "\n" not in str(error.value)


def test_a_damaged_metrics_file_does_not_block_an_intact_checkpoint(tmp_path):
    run = _saved_run(tmp_path, epoch=3, status="completed")
    for text in ('{"status": "compl', "[]"):
        run.metrics.write_text(text)
        resumed = resume(Config(logdir=str(tmp_path), run_name="r", resume=True),
                         frozenset({"resume", "run_name"}))  # fmt: skip
        assert resumed.checkpoint.epoch == 3
        assert resumed.notes[0].startswith(f"metrics file {run.metrics} is damaged")
        assert resumed.notes[0].endswith("it is written anew from the checkpoint")
    run.write_metrics({"status": "completed", "test_accuracy": "x"})
    with pytest.raises(runs.RunError, match=r"is complete \(3 epochs\); pass --n_epochs larger"):
        resume(Config(logdir=str(tmp_path), run_name="r", resume=True),
               frozenset({"resume", "run_name"}))  # fmt: skip


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
    run.save_checkpoint(_write_model("weights"), state(1))
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
