"""The compiled SAF tiles (limitr/model/compiled.py): parity with the eager SAF (itself checked
against the float64 references), the eager fallback, the choice, the cache folder and the
number of graphs over varying shapes. Tiny shapes: a compile costs seconds."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch._inductor.codecache as codecache  # imported before the cache is named, as in a long run

from limitr.model import compiled
from limitr.model.alignment import LocalAlignment
from limitr.model.compiled import SAFKernels, attach, choose, use_cache_dir

D = 16


def _inputs(b: int, n: int, m: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(b, n, D, generator=g, dtype=dtype)
    regions = torch.randn(b, m, D, generator=g, dtype=dtype)
    word_mask = torch.arange(n) < torch.randint(2, n + 1, (b,), generator=g).unsqueeze(1)
    region_mask = torch.ones(b, m, dtype=torch.bool)
    region_mask[::2, m // 2:] = False  # studies without a lateral
    return words, word_mask, regions, region_mask


def _step(module: LocalAlignment, inputs, seed: int = 1) -> list[torch.Tensor]:
    """Scores, input gradients and SAF parameter gradients of one weighted backward."""
    words, word_mask, regions, region_mask = inputs
    torch.manual_seed(seed)  # the SAF dropout masks
    wd, rg = words.clone().requires_grad_(), regions.clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    cap, img = module(wd, word_mask, rg, region_mask)
    weights = torch.linspace(0.1, 1.0, cap.numel(), dtype=cap.dtype).view_as(cap)
    ((cap * weights).sum() + (img * weights.t()).sum()).backward()
    return [cap.detach(), img.detach(), wd.grad, rg.grad] + [p.grad.clone() for p in module.saf.parameters()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return use_cache_dir(tmp_path_factory.mktemp("compile-cache"))


def _system_cache_files() -> set[str]:
    return {str(p) for p in Path(tempfile.gettempdir()).glob("torchinductor_*/**/*")}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_compiled_matches_eager_with_dropout(cache: Path, dtype: torch.dtype, tol: float) -> None:
    before = _system_cache_files()
    torch.manual_seed(0)
    module = LocalAlignment(D, temp1=4.0, saf_dropout=0.3).to(dtype).train()
    inputs = _inputs(5, 7, 8, dtype)
    eager = _step(module, inputs)
    kernels = SAFKernels("cpu")
    attach(module, kernels)
    fused = _step(module, inputs)
    attach(module, None)
    assert kernels.failure is None and kernels.graphs > 0
    for a, b in zip(fused, eager):
        assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()
    with torch.no_grad():  # the inference path (embed, evaluate, validation)
        module.eval()
        ref = module(inputs[0], inputs[1], inputs[2], inputs[3])
        attach(module, kernels)
        got = module(inputs[0], inputs[1], inputs[2], inputs[3])
        attach(module, None)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=tol, rtol=tol)
    assert any((cache / "inductor").iterdir())  # the kernels went to the named folder ...
    assert Path(codecache._HEADER_DIR).is_relative_to(cache)  # with the precompiled headers
    assert _system_cache_files() <= before  # ... and nothing to the system's temporary folder


def test_varying_shapes_do_not_recompile(cache: Path) -> None:
    torch.manual_seed(0)
    module = LocalAlignment(D, temp1=4.0, saf_dropout=0.3).train()
    kernels = SAFKernels("cpu")
    attach(module, kernels)
    for b, n, m in ((6, 9, 10), (4, 6, 8)):  # warm: the graphs of training and inference
        _step(module, _inputs(b, n, m, torch.float32))
        with torch.no_grad():
            module(*_inputs(b, n, m, torch.float32))
    warm = kernels.graphs
    for b, n, m in ((8, 7, 12), (10, 11, 6), (6, 5, 14)):  # other batches, report and region counts
        _step(module, _inputs(b, n, m, torch.float32))
        with torch.no_grad():
            module(*_inputs(b, n, m, torch.float32))
    assert kernels.failure is None
    assert kernels.graphs == warm, (warm, kernels.graphs)


def test_every_variant_stays_compiled(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training and inference, with and without dropout, tiles of one row and partial tiles:
    more graphs than dynamo allows one function by default, none of them a fallback."""
    monkeypatch.setattr(compiled, "COMPILED_CPU_TILE_ELEMENTS", 3 * 12 * D)  # rows of 3 pairs, one-row tiles
    torch.manual_seed(0)
    module = LocalAlignment(D, temp1=4.0, saf_dropout=0.3)
    kernels = SAFKernels("cpu")
    attach(module, kernels)
    for b, n, m in ((7, 9, 12), (5, 6, 8)):
        for train in (True, False):
            module.train(train)
            _step(module, _inputs(b, n, m, torch.float32))
            with torch.no_grad():
                module(*_inputs(b, n, m, torch.float32))
    assert kernels.failure is None, kernels.failure
    assert kernels.graphs > 8, kernels.graphs  # dynamo's default limit per function would have failed


def test_a_failing_compile_falls_back_to_the_same_numbers(caplog: pytest.LogCaptureFixture) -> None:
    def broken(fn):
        def run(*args, **kwargs):
            raise RuntimeError("InductorError: C++ compile error\nsecond line")
        return run

    torch.manual_seed(0)
    module = LocalAlignment(D, temp1=4.0, saf_dropout=0.3).train()
    inputs = _inputs(5, 7, 8, torch.float32)
    eager = _step(module, inputs)
    kernels = SAFKernels("cpu", compile_fn=broken)
    attach(module, kernels)
    with caplog.at_level("WARNING", logger="limitr.compile"):
        fallback = _step(module, inputs)
    assert kernels.failure is not None and "C++ compile error" in kernels.failure
    assert "\n" not in kernels.failure
    assert len([r for r in caplog.records if r.name == "limitr.compile"]) == 1
    for a, b in zip(fallback, eager):  # the dropout masks drawn again: exactly eager
        assert torch.equal(a, b)


def test_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    off = choose(False, "cpu", steps=10**6, elements_per_step=10**9, cache_dir=tmp_path)
    assert not off.compiled and off.kernels is None
    monkeypatch.setattr(compiled, "find_cpp_compiler", lambda: None)
    none = choose(True, "cpu", steps=10**6, elements_per_step=10**9, cache_dir=tmp_path)
    assert not none.compiled and "C++ compiler" in none.reason and none.kernels is None
    monkeypatch.undo()
    cpu = choose("auto", "cpu", steps=10**5, elements_per_step=4 * 10**7, cache_dir=tmp_path)
    assert not cpu.compiled and "eager on CPUs" in cpu.reason  # measured slower there
    forced = choose(True, "cpu", steps=1, elements_per_step=1, cache_dir=tmp_path / "forced")
    assert forced.compiled and forced.kernels is not None and forced.summary()["compiled"] is True
    assert (tmp_path / "forced" / "inductor").is_dir()
    # On CUDA, auto weighs the estimated saving against the compile (the compiler check faked).
    monkeypatch.setattr(compiled, "compiler_problem", lambda device: None)
    short = choose("auto", "cuda", steps=2, elements_per_step=1000, cache_dir=tmp_path)
    assert not short.compiled and "too short" in short.reason
    long = choose("auto", "cuda", steps=10**5, elements_per_step=4 * 10**7, cache_dir=tmp_path)
    assert long.compiled and long.summary()["estimated_saving_s"] > long.summary()["estimated_compile_s"]
    assert compiled.region_count(128, None, "layer2", True) == 512
    assert compiled.region_count(299, 299, "layer3", False) == 19 * 19
