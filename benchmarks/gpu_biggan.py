"""Time `regprim explain` on BigGAN-deep-128 (full size, random weights) on a GPU.

    python benchmarks/gpu_biggan.py --out results/      # needs CUDA and pytorch-pretrained-biggan

For each solver (OR-structured, the paper's) and n (9; 36 = the whole 6x6 grid, OR only: the
paper's solver would need 2**36 subsets), prints the card, wall time, peak GPU memory, passes
per subset, the fraction of subsets (or held-out subsets) meeting the reconstruction constraint
and the universal-matching residual. docs/performance.md records the numbers.
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
    parser.add_argument("--ns", type=int, nargs="+", default=[9, 36])
    parser.add_argument("--solvers", nargs="+", default=["or", "paper"])
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
    for n in args.ns:
        for method in args.solvers:
            if method == "paper" and n > 12:
                continue
            players = "all" if n == 36 else None
            cfg = ExplainConfig(
                model="biggan-deep-128",
                weights="random",
                n=None if players else n,
                players=players,
                device="cuda",
                solver=SolverConfig(method=method, chunk=0),
            )
            torch.cuda.synchronize()
            start = time.perf_counter()
            run = explain(
                cfg,
                out=Path(tempfile.mkdtemp()) / f"{method}-{n}",  # the folders stay on the machine
                generator=gen,
                progress=False,
                verify=False,
            )
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
            s = run.summary
            row = {
                "card": card,
                "solver": method,
                "n": s["n"],
                "wall_seconds": wall,
                "peak_gpu_memory_gib": s["peak_memory_bytes"] / 2**30,
                "mean_passes_per_subset": s["mean_passes_per_subset"],
                "checked": s["subsets_checked"],
                "subsets_meeting_constraint": s["subsets_meeting_constraint"],
                "rel_error_max": s["rel_error_max"],
                "universal_matching_max_rel_residual": s["universal_matching_max_rel_residual"],
                "salient": len(s["salient"]),
                "stage_seconds": s["stage_seconds"],
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_biggan.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
