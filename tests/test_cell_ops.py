"""Building and choosing the compiled per-cell kernels (`swsl_cli.layers.cell_ops`)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from swsl_cli.layers import cell_ops


def needs_compiler():
    if cell_ops.compiler() is None:
        pytest.fail("a C++ compiler is needed to test the kernels (install g++, or set CXX)")


def test_the_kernels_are_compiled_where_the_machine_has_a_compiler():
    if cell_ops.compiler() is None:
        assert cell_ops.library() is None
        assert "no C++ compiler found" in cell_ops.status()
    else:
        assert cell_ops.library() is not None
        assert cell_ops.status() == "compiled per-cell kernels"
        assert cell_ops.is_cached()


def test_tensorflows_kernels_on_request(cell_kernels_choice):
    cell_kernels_choice.setenv(cell_ops.ENVIRONMENT, "tensorflow")
    assert cell_ops.library() is None
    assert cell_ops.status() == "TensorFlow's per-cell kernels (SWSL_CELL_KERNELS=tensorflow)"
    assert cell_ops.is_cached()  # nothing to compile


def test_a_bad_choice_is_one_line(cell_kernels_choice):
    cell_kernels_choice.setenv(cell_ops.ENVIRONMENT, "fastest")
    with pytest.raises(cell_ops.BuildError, match=r"^SWSL_CELL_KERNELS='fastest': expected one"):
        cell_ops.library()


def test_a_failing_compiler_falls_back_or_fails_on_request(cell_kernels_choice, tmp_path):
    cell_kernels_choice.setenv("SWSL_CACHE_DIR", str(tmp_path / "cache"))
    cell_kernels_choice.setenv("CXX", "false")  # runs, prints nothing, fails
    assert cell_ops.library() is None
    assert cell_ops.status() == "TensorFlow's per-cell kernels (false failed: no output)"
    assert not any((tmp_path / "cache").glob("*.so"))  # nothing half-built left under the name
    cell_ops.reset()
    cell_kernels_choice.setenv(cell_ops.ENVIRONMENT, "compiled")
    with pytest.raises(cell_ops.BuildError, match="^false failed"):
        cell_ops.library()


def test_a_missing_compiler_is_named(cell_kernels_choice, tmp_path):
    cell_kernels_choice.setenv("SWSL_CACHE_DIR", str(tmp_path))
    cell_kernels_choice.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert cell_ops.library() is None
    assert "cannot run the C++ compiler" in cell_ops.status()
    cell_kernels_choice.delenv("CXX")
    cell_kernels_choice.setenv("PATH", str(tmp_path))
    cell_ops.reset()
    assert cell_ops.library() is None
    assert cell_ops.status().endswith("(no C++ compiler found (install g++, or set CXX))")


def test_an_unwritable_cache_falls_back_in_one_line(cell_kernels_choice, tmp_path):
    needs_compiler()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cell_kernels_choice.setenv("SWSL_CACHE_DIR", str(blocker / "cache"))
    assert cell_ops.library() is None
    assert cell_ops.status().startswith("TensorFlow's per-cell kernels (cannot write the kernels")


def test_a_cache_folder_anyone_may_write_is_not_used(cell_kernels_choice, tmp_path):
    needs_compiler()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    cell_kernels_choice.setenv("SWSL_CACHE_DIR", str(shared))
    assert cell_ops.library() is None
    assert f"not using {shared}: it belongs to another user or anyone may write it" in (
        cell_ops.status()
    )
    assert list(shared.iterdir()) == []


def test_a_failed_build_is_remembered_not_retried(cell_kernels_choice, tmp_path):
    log = tmp_path / "runs.log"
    failing = tmp_path / "cxx"
    failing.write_text(
        f'#!/bin/sh\ncase " $* " in *" -shared "*) echo compile >> "{log}";; esac\n'
        'echo "cell_matmul.cc:1: error: no such header" >&2; exit 1\n'
    )
    failing.chmod(0o755)
    cell_kernels_choice.setenv("SWSL_CACHE_DIR", str(tmp_path / "cache"))
    cell_kernels_choice.setenv("CXX", str(failing))
    assert cell_ops.library() is None
    reason = f"{failing} failed: cell_matmul.cc:1: error: no such header"
    assert cell_ops.status() == f"TensorFlow's per-cell kernels ({reason})"
    assert cell_ops.is_cached()  # nothing to compile next time
    cell_ops.reset()
    assert cell_ops.library() is None
    assert cell_ops.status().startswith(f"TensorFlow's per-cell kernels ({reason} (an earlier")
    assert "to try again)" in cell_ops.status()
    assert log.read_text().splitlines() == ["compile"]  # one compile for both tries


def test_a_library_that_does_not_load_is_not_cached(cell_kernels_choice, tmp_path):
    not_a_library = tmp_path / "cxx"
    not_a_library.write_text(
        '#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; [ $# -eq 0 ] && exit 0; done\n'
        'echo "not a shared library" > "$2"\n'
    )
    not_a_library.chmod(0o755)
    cell_kernels_choice.setenv("SWSL_CACHE_DIR", str(tmp_path / "cache"))
    cell_kernels_choice.setenv("CXX", str(not_a_library))
    assert cell_ops.library() is None
    assert f"the library {not_a_library} built does not load" in cell_ops.status()
    assert not list((tmp_path / "cache").glob("*.so"))


def test_a_cached_library_anyone_may_write_is_not_loaded(cell_kernels_choice, tmp_path):
    needs_compiler()
    built = cell_ops.library_path(cell_ops.compiler())
    cell_kernels_choice.setenv("SWSL_CACHE_DIR", str(tmp_path))
    planted = cell_ops.library_path(cell_ops.compiler())
    planted.write_bytes(built.read_bytes())
    cell_ops.digest_path(planted).write_bytes(cell_ops.digest_path(built).read_bytes())
    planted.chmod(0o666)
    assert cell_ops.library() is None
    assert "anyone may write it; remove it or set SWSL_CACHE_DIR" in cell_ops.status()
    assert planted.exists()  # refused, not deleted


def test_the_cached_name_changes_with_the_source_tensorflow_compiler_and_cpu(monkeypatch, tmp_path):
    import tensorflow as tf

    needs_compiler()
    cxx = cell_ops.compiler()
    first = cell_ops.library_path(cxx)
    assert first.parent == cell_ops.cache_dir() and first.suffix == ".so"
    assert cell_ops.library_path(cxx) == first
    names = {first}
    with monkeypatch.context() as patched:
        patched.setattr(cell_ops, "cpu_signature", lambda: "another CPU")
        names.add(cell_ops.library_path(cxx))
    with monkeypatch.context() as patched:
        patched.setattr(tf, "__version__", tf.__version__ + ".post1")
        names.add(cell_ops.library_path(cxx))
    with monkeypatch.context() as patched:
        edited = tmp_path / "cell_matmul.cc"
        edited.write_bytes(cell_ops.SOURCE.read_bytes() + b"\n")
        patched.setattr(cell_ops, "SOURCE", edited)
        names.add(cell_ops.library_path(cxx))
    (tmp_path / "other").write_text('echo "another compiler 1.0"\n')
    names.add(cell_ops.library_path(f"/bin/sh {tmp_path / 'other'}"))
    assert len(names) == 5


def test_two_processes_compile_once_and_replace_a_damaged_library(tmp_path):
    """A truncated library under the cached name, a killed build's leftovers, and two processes
    starting at once: both load the kernels, built by one compile, and nothing is left over."""
    needs_compiler()
    log = tmp_path / "compiles.log"
    wrapper = tmp_path / "cxx"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -shared "*) echo compile >> "{log}";; esac\n'
        f'exec {cell_ops.compiler()} "$@"\n'
    )
    wrapper.chmod(0o755)
    # A compiler command of several words, as `ccache g++`.
    env = dict(os.environ, SWSL_CACHE_DIR=str(tmp_path / "cache"), CXX=f"/bin/sh {wrapper}")
    env.pop(cell_ops.ENVIRONMENT, None)
    script = textwrap.dedent(
        """
        from swsl_cli.layers import cell_ops
        print(cell_ops.library_path(cell_ops.compiler()))
        print(cell_ops.status())
        """
    )
    name = subprocess.run(
        [
            sys.executable,
            "-c",
            "from swsl_cli.layers import cell_ops; "
            "print(cell_ops.library_path(cell_ops.compiler()))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(name).parent.mkdir(parents=True)
    # A truncated copy of a good library with the good one's digest beside it, as a crash
    # after the rename would leave: loading it would crash the process inside dlopen.
    built = cell_ops.library_path(cell_ops.compiler())
    good = built.read_bytes()
    Path(name).write_bytes(good[: len(good) // 2])
    cell_ops.digest_path(Path(name)).write_bytes(cell_ops.digest_path(built).read_bytes())
    is_cached = "from swsl_cli.layers import cell_ops; print(cell_ops.is_cached())"
    assert subprocess.run(
        [sys.executable, "-c", is_cached], env=env, capture_output=True, text=True, check=True
    ).stdout.split() == ["False"]  # so swsl-train says it compiles
    stale = Path(name).parent / ".build-killed"  # what a build killed mid-way leaves
    stale.mkdir()
    (stale / Path(name).name).write_bytes(b"half")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
        assert out.splitlines() == [name, "compiled per-cell kernels"], err
    assert log.read_text().splitlines() == ["compile"]
    assert len(Path(name).read_bytes()) == len(good)
    assert not list(Path(name).parent.glob(".build-*"))


def test_swsl_train_says_it_compiles_on_a_new_machine(tmp_path, mnist_dir):
    """An empty cache: the run says it compiles, then reports the compiled kernels."""
    needs_compiler()
    env = dict(os.environ, SWSL_CACHE_DIR=str(tmp_path / "cache"))
    env.pop(cell_ops.ENVIRONMENT, None)
    command = [
        sys.executable,
        "-m",
        "swsl_cli",
        "--layer",
        "local",
        "--n_epochs",
        "1",
        "--max_train_examples",
        "64",
        "--max_test_examples",
        "64",
        "--quiet",
        "--data_dir",
        str(mnist_dir),
        "--logdir",
        str(tmp_path / "tb"),
        "--run_name",
        "r",
    ]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    compiling = [i for i, line in enumerate(lines) if line.startswith("compiling the per-cell")]
    device = [i for i, line in enumerate(lines) if line.startswith("device: ")]
    assert len(compiling) == 1 and len(device) == 1 and compiling[0] < device[0]
    assert "; compiled per-cell kernels; strategy" in lines[device[0]]
    assert len(list((tmp_path / "cache").glob("cell_matmul-*.so"))) == 1
    again = subprocess.run(
        command[:-1] + ["r2"], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr
    assert "compiling the per-cell" not in again.stdout
    assert "; compiled per-cell kernels; strategy" in again.stdout
