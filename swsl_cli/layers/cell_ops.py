"""The per-cell products as compiled TensorFlow CPU kernels (`cell_matmul.cc`), built once per machine.

`CellPatches`'s TensorFlow path multiplies every cell's patches by its kernel
with these kernels where they can be built: they read each patch where it lies
in the input instead of gathering the patches into a tensor, transposing them
and summing their gradient back, which is most of what a per-cell layer paid
above a convolution on a CPU (docs/benchmarks.md).

TensorFlow's documented way to add an op is a shared library compiled against
the installed TensorFlow (`tf.sysconfig` gives the flags) and loaded with
`tf.load_op_library`. It is compiled here on first use, with the machine's C++
compiler (`$CXX`, else `c++`, `g++` or `clang++`) for the machine's CPU
(`-march=native`), into a cache folder:

- `$SWSL_CACHE_DIR`, else `$XDG_CACHE_HOME/swsl-cli`, else `~/.cache/swsl-cli`;
- one library per source, TensorFlow version, compiler and CPU (the name
  carries a hash of all four), so a home folder shared by different machines
  gets one per CPU kind;
- compiled in a scratch folder, loaded from there, then renamed into place with
  its SHA-256 beside it, under a lock: two processes starting at once compile it
  once, a damaged or truncated file is compiled again instead of loaded, and a
  compiler that fails leaves a note so later processes do not try again (delete
  the `.failed` file to retry).

Where it cannot be built (no compiler, a TensorFlow whose headers do not fit)
or `SWSL_CELL_KERNELS=tensorflow` is set, the layers keep TensorFlow's own
kernels, which compute the same numbers more slowly; `status()` says which
kernels are in use and why.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("cell_matmul.cc")
ENVIRONMENT = "SWSL_CELL_KERNELS"
CHOICES = ("auto", "compiled", "tensorflow")
COMPILERS = ("c++", "g++", "clang++")
COMPILE_SECONDS = 15  # what a build took on a 2-core x86_64 CPU: 8-12 s

_state: dict = {}


class BuildError(RuntimeError):
    """The kernels could not be compiled or loaded; the message is one line."""


def cache_dir() -> Path:
    """Where the compiled kernels are kept."""
    if os.environ.get("SWSL_CACHE_DIR"):
        return Path(os.environ["SWSL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "swsl-cli"


def choice() -> str:
    """`$SWSL_CELL_KERNELS`: `auto` (the default), `compiled` (fail if it cannot) or `tensorflow`."""
    value = os.environ.get(ENVIRONMENT, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise BuildError(f"{ENVIRONMENT}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def compiler() -> str | None:
    """The C++ compiler command: `$CXX` (it may carry words, as `ccache g++`), else the first
    of `COMPILERS` on the PATH."""
    if os.environ.get("CXX", "").strip():
        return os.environ["CXX"].strip()
    for name in COMPILERS:
        if shutil.which(name):
            return name
    return None


def cpu_signature() -> str:
    """The CPU's model and instruction sets, which `-march=native` compiles for."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    keys = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    seen = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in keys and key not in seen:
            seen[key] = value.strip()
    return platform.machine() + "|" + "|".join(f"{k}={seen[k]}" for k in sorted(seen))


def command(cxx: str, output: Path) -> list[str]:
    """The compile command, with TensorFlow's own compile and link flags."""
    import tensorflow as tf

    return [
        *shlex.split(cxx),
        "-shared",
        "-fPIC",
        "-O3",
        "-march=native",
        "-ffp-contract=fast",  # multiply-adds (the ISO C++ modes turn contraction off)
        "-w",
        *tf.sysconfig.get_compile_flags(),
        str(SOURCE),
        "-o",
        str(output),
        *tf.sysconfig.get_link_flags(),
    ]


def library_path(cxx: str) -> Path:
    """The cached library's path for this source, TensorFlow, compiler and CPU."""
    import tensorflow as tf

    try:
        version = subprocess.run(
            [*shlex.split(cxx), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        raise BuildError(f"cannot run the C++ compiler {cxx!r}: {error}") from None
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), tf.__version__, tf.__file__, version, cpu_signature()):
        digest.update(part if isinstance(part, bytes) else part.encode())
    return cache_dir() / f"cell_matmul-{digest.hexdigest()[:16]}.so"


def digest_path(target: Path) -> Path:
    """The file holding the SHA-256 of the library `target`, written with it."""
    return target.with_suffix(".sha256")


def failure_path(target: Path) -> Path:
    """The file that remembers a failed build of `target`, so later processes do not retry it."""
    return target.with_suffix(".failed")


def load_cached(tf, target: Path):
    """The cached library, loaded; `None` when it is missing, damaged or does not load.

    A library is loaded only if its bytes have the SHA-256 written beside it
    when it was built: a truncated file (a crash after the rename, a copy
    that ran out of disk) would otherwise bring the process down inside
    `dlopen`.
    """
    failed = failure_path(target)
    if failed.is_file():
        reason = failed.read_text(errors="replace").strip() or "an earlier build failed"
        raise BuildError(f"{reason} (an earlier build; delete {failed} to try again)")
    seen = intact(target)
    if seen is None:
        return None
    check_owned(target, seen)
    try:
        return tf.load_op_library(str(target))
    except (tf.errors.OpError, OSError):
        return None


def intact(target: Path) -> os.stat_result | None:
    """`target`'s status if it exists with the SHA-256 written beside it, else `None`."""
    try:
        seen = target.stat()
        content = target.read_bytes()
        expected = digest_path(target).read_text().strip()
    except OSError:
        return None
    return seen if hashlib.sha256(content).hexdigest() == expected else None


def build(tf, cxx: str, target: Path):
    """Compiles the kernels into the cache, unless another process did; returns them loaded.

    The library is compiled in a scratch folder and loaded from there first:
    only a library that loads is renamed into place, with its SHA-256 beside
    it, both synced to disk. A compiler that fails, or builds a library that
    does not load, leaves a note under the cached name instead, so later
    processes fall back at once instead of compiling again.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        check_owned(target.parent, target.parent.stat())
        with _locked(target.parent / ".lock"):
            module = load_cached(tf, target)  # built by another process while we waited
            if module is not None:
                return module
            for stale in target.parent.glob(".build-*"):  # left by a build that was killed
                shutil.rmtree(stale, ignore_errors=True)
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
                partial = Path(scratch) / target.name
                status, output = compile_into(cxx, partial)
                if status != 0 or not partial.is_file():
                    remember_failure(target, f"{cxx} failed: {first_error(output)}", output)
                try:
                    module = tf.load_op_library(str(partial))
                except (tf.errors.OpError, OSError) as error:
                    message = (str(error).strip().splitlines() or ["no message"])[0][:300]
                    remember_failure(target, f"the library {cxx} built does not load: {message}")
                partial.chmod(0o755)  # whatever the umask: writable by its owner alone
                digest = Path(scratch) / digest_path(target).name
                digest.write_text(hashlib.sha256(partial.read_bytes()).hexdigest() + "\n")
                for path in (partial, digest):
                    synced(path)
                os.replace(digest, digest_path(target))
                os.replace(partial, target)
                synced(target.parent)
            return module
    except OSError as error:
        raise BuildError(f"cannot write the kernels to {target.parent}: {error}") from None


def remember_failure(target: Path, message: str, output: str = "") -> None:
    """Raises `BuildError(message)`, first noting it under the cached name (not for a full
    disk or a killed compiler, which may go away)."""
    if "no space left" not in (message + output).lower():
        try:
            failure_path(target).write_text(message + "\n")
        except OSError:
            pass
    raise BuildError(message)


def synced(path: Path) -> None:
    """`fsync` of a file or folder (a folder's where the system allows it)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def compile_into(cxx: str, output: Path) -> tuple[int, str]:
    """Runs the compiler; returns its exit status and what it printed.

    The compiler runs in a process group of its own, killed whole if this
    process is interrupted (Ctrl-C, SIGTERM) or the compile outlasts 10
    minutes, so no compiler pass outlives the build.
    """
    try:
        process = subprocess.Popen(
            command(cxx, output),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    except (OSError, ValueError) as error:
        raise BuildError(f"cannot run the C++ compiler {cxx!r}: {error}") from None
    try:
        printed, _ = process.communicate(timeout=600)
    except BaseException as error:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (AttributeError, OSError):
            process.kill()
        process.wait()
        if isinstance(error, subprocess.TimeoutExpired):
            raise BuildError(f"{cxx} did not finish within 10 minutes") from None
        raise
    return process.returncode, printed


def check_owned(path: Path, seen: os.stat_result) -> None:
    """Refuses a library, or a cache folder, of another user's or that anyone may write: the
    library runs inside the process."""
    getuid = getattr(os, "getuid", None)
    if getuid is not None and (seen.st_uid != getuid() or seen.st_mode & 0o002):
        raise BuildError(
            f"not using {path}: it belongs to another user or anyone may write it; "
            "remove it or set SWSL_CACHE_DIR to a folder of your own"
        )


def first_error(output: str) -> str:
    """The compiler's first error line (a linker's "final link failed" too), or its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if any(word in line.lower() for word in ("error", "failed", "cannot", "no space")):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


class _locked:
    """An exclusive `flock` on `path` (a no-op where `fcntl` does not exist)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.handle = open(self.path, "a")
        try:
            import fcntl
        except ImportError:
            return self
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.handle.close()  # closing releases the lock


def load():
    """The loaded op module, built if needed; raises `BuildError`."""
    import tensorflow as tf

    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (install g++, or set CXX)")
    target = library_path(cxx)
    if target.parent.is_dir():
        check_owned(target.parent, target.parent.stat())
    module = load_cached(tf, target) or build(tf, cxx, target)
    register_second_order_gradients(tf, module)
    return module


def register_second_order_gradients(tf, module) -> None:
    """Gradients of the kernels, so the layers differentiate twice as the `keras.ops`
    reference does. The gradient kernels are bilinear in their inputs and upstream
    gradient, and their gradients are the same kernels again."""
    if _state.get("gradients registered"):
        return
    try:

        @tf.RegisterGradient("SwslCellMatmulKernelGrad")
        def _kernel_grad_grad(op, grad):
            inputs, kernels, table, upstream = op.inputs
            return [
                module.swsl_cell_matmul_input_grad(inputs, grad, table, upstream),
                None,
                None,
                module.swsl_cell_matmul(inputs, grad, table),
            ]

        @tf.RegisterGradient("SwslCellMatmulInputGrad")
        def _input_grad_grad(op, grad):
            inputs, kernels, table, upstream = op.inputs
            return [
                None,
                module.swsl_cell_matmul_kernel_grad(grad, kernels, table, upstream),
                None,
                module.swsl_cell_matmul(grad, kernels, table),
            ]

        @tf.RegisterGradient("SwslMixKernels")
        def _mix_grad(op, grad):
            coefficients, weights = op.inputs
            # One op per operand, and none for an operand the tape does not follow: fixed
            # centroids (the default network's) make constant coefficients.
            skip = getattr(op, "skip_input_indices", None) or ()
            return [
                None if 0 in skip else module.swsl_mix_kernels_coefficients_grad(weights, grad),
                None if 1 in skip else module.swsl_mix_kernels_weights_grad(coefficients, grad),
            ]

        # Both gradients are bilinear in (operand, upstream); their gradients are the other
        # operand's gradient and the mix again.
        @tf.RegisterGradient("SwslMixKernelsCoefficientsGrad")
        def _mix_coefficients_grad_grad(op, grad):
            weights, upstream = op.inputs
            return [
                module.swsl_mix_kernels_weights_grad(grad, upstream),
                module.swsl_mix_kernels(grad, weights),
            ]

        @tf.RegisterGradient("SwslMixKernelsWeightsGrad")
        def _mix_weights_grad_grad(op, grad):
            coefficients, upstream = op.inputs
            return [
                module.swsl_mix_kernels_coefficients_grad(grad, upstream),
                module.swsl_mix_kernels(coefficients, grad),
            ]

    except KeyError:  # registered earlier in this process
        pass
    _state["gradients registered"] = True


def library():
    """The compiled kernels' op module, or `None` where TensorFlow's own kernels are used.

    Built and loaded on the first call of the process; later calls return the
    same answer. With `SWSL_CELL_KERNELS=compiled` a failed build raises
    `BuildError` instead of falling back.
    """
    if "module" not in _state:
        selected = choice()
        module, reason = None, f"{ENVIRONMENT}=tensorflow"
        if selected != "tensorflow":
            try:
                module, reason = load(), ""
            except BuildError as error:
                if selected == "compiled":
                    raise
                reason = str(error)
        _state.update(module=module, reason=reason)
    return _state["module"]


def is_cached() -> bool:
    """Whether the kernels are compiled already, intact (or will not be), so `library()` will
    not compile."""
    if "module" in _state or choice() == "tensorflow":
        return True
    cxx = compiler()
    if cxx is None:
        return True
    try:
        target = library_path(cxx)
    except BuildError:
        return True
    return failure_path(target).is_file() or intact(target) is not None


def status() -> str:
    """One line: which kernels the per-cell layers use on TensorFlow's CPU, and why."""
    if library() is not None:
        return "compiled per-cell kernels"
    return f"TensorFlow's per-cell kernels ({_state['reason']})"


def reset() -> None:
    """Forgets the loaded answer, so the next `library()` decides again (tests)."""
    registered = _state.get("gradients registered")
    _state.clear()
    if registered:
        _state["gradients registered"] = True
