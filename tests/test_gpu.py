"""CUDA path (run with `pytest -m gpu` on a machine with a GPU; CI has none)."""

import pytest
import torch

from regprim import ExplainConfig, SolverConfig, explain
from regprim.generators.planted import DEFAULT_PLAYERS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("method", ["or", "paper"])
def test_planted_on_cuda_matches_cpu(method):
    cfg = dict(
        model="planted",
        players=list(DEFAULT_PLAYERS),
        baseline_count=200,
        solver=SolverConfig(method=method),
    )
    cpu = explain(ExplainConfig(**cfg), progress=False, verify=False)
    gpu = explain(ExplainConfig(**cfg, device="cuda"), progress=False)
    assert sorted(gpu.summary["salient"]) == sorted(cpu.summary["salient"])
    diff = (gpu.minimal_features.cpu() - cpu.minimal_features).abs().max()
    assert diff < 1e-3
    assert gpu.summary["peak_memory_bytes"] > 0


def test_dcgan_on_cuda_with_auto_chunk_and_bf16():
    cfg = ExplainConfig(
        model="dcgan-faces",
        n=4,
        baseline_count=100,
        device="cuda",
        solver=SolverConfig(method="paper", chunk=0, precision="bfloat16"),
    )
    run = explain(cfg, progress=False)
    assert run.summary["chunk"] >= 1
    assert run.summary["subsets_meeting_constraint"] == 1.0


def test_diffusion_family_on_cuda():
    """faces-ddim (the shipped diffusion U-Net) on the device: the split is exact there and a
    small run meets the constraint."""
    pytest.importorskip("diffusers")
    from regprim import load_model

    gen = load_model("faces-ddim")
    code = gen.sample_codes(1, 0)
    with torch.no_grad():
        want = gen.sample(code)
        gen.to("cuda")
        got = gen.g(gen.d(code.cuda()), code.cuda()).cpu()
    assert (got - want).abs().max() < 1e-3
    cfg = ExplainConfig(model="faces-ddim", n=4, baseline_count=50, device="cuda")
    run = explain(cfg, progress=False)
    assert run.summary["subsets_meeting_constraint"] == 1.0
