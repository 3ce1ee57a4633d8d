"""The local alignment's SAF tiles compiled with ``torch.compile``, where it pays.

The SAF makes about 25 elementwise passes over each (pairs, K, D) tile around its matrix
products (:mod:`limitr.model.saf`). ``torch.compile`` (inductor: C++ on the CPU, Triton on
CUDA) fuses them into a few loops around the same products, forward and backward
(:func:`limitr.model.saf.forward_tile`, :func:`limitr.model.saf.backward_tile`). The tiles,
the dropout masks and the saved activations are those of the eager code, so the two paths
compute the same function (within the bf16 / float32 rounding the parity tests allow) and
either backward runs after either forward.

- :func:`choose` decides (``train.compile`` / ``evaluate.compile``: auto | true | false):
  never without a working compiler; with auto only on CUDA and only when the run is long
  enough for the compile to pay (estimated steps x time saved per step against the
  estimated compile time); on CPUs auto stays eager, where the compiled tiles measured
  slower. Deterministic given the settings and the machine: a rerun makes the same choice.
- :func:`use_cache_dir` points inductor's and Triton's caches at a folder of the run (set
  before the first compile); nothing is written to the system's temporary folder, and later
  processes (a resumed run, embed, evaluate) that name the same folder reuse the kernels.
- Shapes vary (the last batch, the report chunks, studies without a lateral): the tile
  functions are compiled with dynamic shapes, so a handful of graphs serve every step.
- Where compiling or running a compiled kernel fails, :class:`SAFKernels` says why in one
  line, restores the random state and the call is redone eagerly, and so is every later one.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch._dynamo.config  # noqa: F401 - the limits patched in run
import torch.fx.experimental._config  # noqa: F401 - the shape settings patched in run

LOG = logging.getLogger("limitr.compile")

#: Settings of ``train.compile`` (and of ``evaluate.compile``).
CHOICES = ("auto", True, False)

#: Estimated first compile of the forward and backward tile graphs, seconds (30 to 60 s
#: measured cold on a 2-core CPU for tiny and default shapes; a GPU compiles Triton kernels).
ESTIMATED_COMPILE_S = {"cpu": 60.0, "cuda": 90.0}
#: Estimated time saved per element of the SAF's (pairs, K, D) tensors per training step on
#: CUDA, nanoseconds: about 20 fewer float32 passes of a read and a write at 2 to 3 TB/s
#: (an estimate from memory traffic, not a measurement; benchmarks/gpu_check.py measures it).
SAVED_NS_PER_ELEMENT = {"cuda": 0.05}
#: Why auto stays eager on a CPU: the compiled tiles measured slower than the eager ones
#: (benchmarks/bench_local_alignment.py --compiled; docs/experiments.md).
CPU_AUTO_REASON = ("auto is eager on CPUs: the compiled local alignment measured slower than the eager one "
                   "(benchmarks/bench_local_alignment.py --compiled); set {key}: true to compile anyway")
#: Elements of a (pairs, K, D) tile per compiled call on a CPU (2^17 measured no better
#: than the eager tiles' 2^21 on the 2-core CPU; fewer calls cost less Python).
COMPILED_CPU_TILE_ELEMENTS = 1 << 21
#: Graphs allowed per tile function (dynamo's default, 8, is below what the default's shapes need).
RECOMPILE_LIMIT = 64
#: Region grid stride of each ResNet stage the region features may come from.
STAGE_STRIDE = {"layer2": 8, "layer3": 16, "layer4": 32}


def find_cpp_compiler() -> Optional[str]:
    """The C++ compiler inductor would use on the CPU ($CXX, g++, clang++ or c++), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compiler_problem(device: torch.device) -> Optional[str]:
    """Why the SAF cannot be compiled for ``device`` here, or None when it can."""
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python version"
    except Exception as exc:  # noqa: BLE001 - an unusual build of torch
        return f"torch.compile is not available ({type(exc).__name__})"
    if device.type == "cpu":
        if find_cpp_compiler() is None:
            return "no C++ compiler found (g++, clang++ or $CXX) for torch inductor's CPU kernels"
        return None
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "this torch has no Triton support"
        if not has_triton():
            return "Triton is not installed or does not support this GPU"
        return None
    return f"torch.compile's kernels are not used on {device.type} here"


def use_cache_dir(path: Union[str, Path]) -> Path:
    """Put inductor's and Triton's caches under ``path`` (made if missing), for this process
    and the compile workers it starts. Call before the first compile."""
    path = Path(path).resolve()
    (path / "inductor").mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    # inductor fixes the folder of its precompiled C++ headers when it is first imported;
    # when that has happened already, move it too so nothing lands in the system's /tmp.
    codecache = sys.modules.get("torch._inductor.codecache")
    if codecache is not None and hasattr(codecache, "_HEADER_DIR"):
        codecache._HEADER_DIR = str(path / "inductor" / "precompiled_headers")
        codecache._HEADER_LOCK_DIR = os.path.join(codecache._HEADER_DIR, "locks")
    return path


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class SAFKernels:
    """The compiled tile functions of the SAF for one device type, with the eager fallback.

    ``forward`` / ``backward`` are :func:`limitr.model.saf.forward_tile` and
    :func:`~limitr.model.saf.backward_tile` under ``torch.compile`` (dynamic shapes, one
    graph each). :meth:`run` runs a whole tiled pass with them; a failure (no compiler after
    all, an unsupported operation) is recorded in ``failure``, said in one line, and the
    caller redoes the pass eagerly.
    """

    def __init__(self, device_type: str, *, compile_fn: Optional[Callable] = None) -> None:
        from limitr.model.saf import backward_tile, forward_tile

        compile_fn = compile_fn or (lambda fn: torch.compile(fn, dynamic=True, fullgraph=True))
        self.device_type = device_type
        self.forward = compile_fn(forward_tile)
        self.backward = compile_fn(backward_tile)
        self.failure: Optional[str] = None
        self.compile_seconds = 0.0  # time of the calls that compiled new graphs
        self.graphs = 0  # graphs compiled by this object's calls

    def usable(self, device: torch.device) -> bool:
        return self.failure is None and device.type == self.device_type

    @staticmethod
    def tile_elements(device: torch.device) -> int:
        from limitr.model.saf import DEVICE_TILE_ELEMENTS

        return COMPILED_CPU_TILE_ELEMENTS if device.type == "cpu" else DEVICE_TILE_ELEMENTS

    def run(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)``, or None after a failure (said once; the random state restored, so
        that the eager redo draws the same dropout masks)."""
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state() if self.device_type == "cuda" else None
        before, started = _graph_count(), time.perf_counter()
        try:
            # No duck sizing: sizes that happen to be equal in one call (pairs and reports,
            # say) get symbols of their own, so that a later call where they differ does not
            # compile again. (A size of 1 still gets a graph of its own: one more at most per dim.)
            # Each variant (training or inference, with or without dropout, a tile of one row)
            # is a graph of its own: a dozen at the default's shapes, above dynamo's default
            # limit of 8 per function, after which fullgraph compiles fail.
            with torch.fx.experimental._config.patch(use_duck_shape=False), \
                    torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of the compiler means eager
            self.failure = _one_line(exc)
            LOG.warning("compiled local alignment failed, running eager from here on: %s", self.failure)
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state)
            return None
        new = _graph_count() - before
        if new:
            self.graphs += new
            self.compile_seconds += time.perf_counter() - started
        return result


@dataclass
class CompileChoice:
    """What ``train.compile`` (or ``evaluate.compile``) resolved to, and why."""

    setting: Union[str, bool]
    compiled: bool
    reason: str
    estimated_compile_s: Optional[float] = None
    estimated_saving_s: Optional[float] = None
    cache_dir: Optional[str] = None
    kernels: Optional[SAFKernels] = field(default=None, repr=False)

    def summary(self) -> dict:
        """For train.json: the choice, its reason, the measured compile time, any fallback."""
        out = {"setting": self.setting, "compiled": self.compiled, "reason": self.reason}
        if self.estimated_compile_s is not None:
            out["estimated_compile_s"] = round(self.estimated_compile_s, 1)
            out["estimated_saving_s"] = round(self.estimated_saving_s or 0.0, 1)
        if self.kernels is not None:
            out["compile_s"] = round(self.kernels.compile_seconds, 1)
            out["graphs"] = self.kernels.graphs
            out["fallback"] = self.kernels.failure
        return out

    def line(self) -> str:
        """One line for the stage's output."""
        if self.kernels is not None and self.kernels.failure:
            return f"eager (compiling failed: {self.kernels.failure})"
        return f"{'compiled' if self.compiled else 'eager'} ({self.reason})"


def normalize_setting(value: Any) -> Union[str, bool]:
    """``auto``, True or False from a settings value (strings true / false accepted)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return "auto" if text == "auto" else text == "true"
    raise ValueError(f"compile must be auto, true or false, got {value!r}")


def saf_elements_per_step(batch: int, words: int, regions: int, dim: int, world_size: int = 1) -> int:
    """Elements of the SAF's (pairs, K, D) tensors in one process's training step: every
    (study, report) pair of its rows against the global batch, K = words plus regions."""
    rows = max(1, math.ceil(batch / max(1, world_size)))
    return rows * batch * (words + regions) * dim


def region_count(crop: int, upsample_to: Optional[int], local_layer: str, lateral: bool) -> int:
    """Regions per study: the grid of the region features' stage (both views with a lateral)."""
    size = upsample_to or crop
    grid = math.ceil(size / STAGE_STRIDE.get(local_layer, 16))
    return grid * grid * (2 if lateral else 1)


def choose(
    setting: Any,
    device: Union[str, torch.device],
    *,
    steps: int,
    elements_per_step: int,
    cache_dir: Optional[Union[str, Path]],
    key: str = "train.compile",
) -> CompileChoice:
    """Resolve ``setting`` (auto | true | false, the value of ``key``) for ``steps`` steps
    whose SAF works on ``elements_per_step`` elements each (forward and backward in training;
    evaluation passes its one forward over all pairs). auto compiles on CUDA when the estimated
    saving exceeds the estimated compile, and never on a CPU (:data:`CPU_AUTO_REASON`); true
    compiles wherever a compiler works. When it compiles, the caches go to ``cache_dir`` and
    the returned choice holds the kernels (attach them with :func:`attach`)."""
    setting = normalize_setting(setting)
    device = torch.device(device)
    if setting is False:
        return CompileChoice(setting, False, f"{key} is false")
    problem = compiler_problem(device)
    if problem is not None:
        return CompileChoice(setting, False, problem)
    compile_s = ESTIMATED_COMPILE_S.get(device.type, 90.0)
    saving_s = steps * elements_per_step * SAVED_NS_PER_ELEMENT.get(device.type, 0.0) * 1e-9
    if setting == "auto" and device.type == "cpu":
        return CompileChoice(setting, False, CPU_AUTO_REASON.format(key=key))
    if setting == "auto" and saving_s <= compile_s:
        return CompileChoice(
            setting, False,
            f"the run is too short to pay: about {saving_s:.0f} s saved over {steps} steps "
            f"against a compile of about {compile_s:.0f} s",
            compile_s, saving_s,
        )
    reason = (f"{key} is true" if setting is True else
              f"about {saving_s:.0f} s saved over {steps} steps against a compile of about {compile_s:.0f} s")
    cache = str(use_cache_dir(cache_dir)) if cache_dir is not None else None
    kernels = SAFKernels(device.type)
    return CompileChoice(setting, True, reason, compile_s, saving_s, cache, kernels)


def attach(model: torch.nn.Module, kernels: Optional[SAFKernels]) -> None:
    """Give every SAF module of ``model`` the compiled kernels (None = back to eager)."""
    from limitr.model.saf import SAF

    for module in model.modules():
        if isinstance(module, SAF):
            module.kernels = kernels
