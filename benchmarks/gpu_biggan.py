"""Time `regprim explain` on BigGAN-deep-128 (full size, random weights) on a GPU, n = 9.

    python benchmarks/gpu_biggan.py --out results/      # needs CUDA and pytorch-pretrained-biggan

Runs the default float32 solver and the bf16-autocast solver, and prints, for each, the card,
wall time, peak GPU memory, mean passes per subset, the fraction of subsets meeting the
reconstruction constraint and the universal-matching residual. docs/performance.md records the
numbers; rerun it on your own GPU to compare.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from regprim import ExplainConfig, SolverConfig, explain, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--n", type=int, default=9)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    card = torch.cuda.get_device_name()
    print(f"card: {card}, torch {torch.__version__}")
    start = time.perf_counter()
    gen = load_model("biggan-deep-128", weights="random", device="cuda")
    print(
        f"model built in {time.perf_counter() - start:.1f} s; layer {gen.layer}, "
        f"feature {gen.shapes()[0]}"
    )
    results = []
    for precision in args.precisions:
        cfg = ExplainConfig(
            model="biggan-deep-128",
            weights="random",
            n=args.n,
            device="cuda",
            solver=SolverConfig(precision=precision, chunk=0),
        )
        torch.cuda.synchronize()
        start = time.perf_counter()
        run = explain(
            cfg,
            out=Path(tempfile.mkdtemp()) / precision,  # the run folders stay on the machine
            generator=gen,
            progress=False,
            verify=False,
        )
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        s = run.summary
        row = {
            "card": card,
            "precision": precision,
            "n": s["n"],
            "wall_seconds": wall,
            "peak_gpu_memory_gib": s["peak_memory_bytes"] / 2**30,
            "chunk": s.get("chunk"),
            "mean_passes_per_subset": s["mean_passes_per_subset"],
            "subsets_meeting_constraint": s["subsets_meeting_constraint"],
            "rel_error_max": s["rel_error_max"],
            "universal_matching_max_rel_residual": s["universal_matching_max_rel_residual"],
        }
        results.append(row)
        print(json.dumps(row))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_biggan.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
