"""The CPU's SIMD paths side by side (docs/performance.md, "Every CPU's speed").

torch picks its kernels by what the CPU can do; the same process can be made to run the kernels
an AVX2-only CPU (most laptops, AMD EPYC before Zen 4) would run:
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``. This runs
every measurement once per path, in child processes taken in turn (native, AVX2, native, ...),
so that both paths see the same machine at the same time:

- the sgemm rate (2048^3, best of 5): the machine's peak on that path;
- one generator pass of the default solve (dcgan-faces block3, n = 9, the players' window,
  batch 36 = 32 subsets + 4 exclusivity players; forward and input gradient) in channels-last
  and NCHW, with oneDNN on and off: ms and achieved GFLOP/s (FLOPs counted by torch);
- ``explain`` on dcgan-faces n = 9 (seed 3, ``--no-verify``) with the default and the paper's
  solver: seconds inside explain and their ratio;
- the whole grid (``--players all``, seed 0, ``--no-verify``).

    python benchmarks/bench.py paths        # or: python benchmarks/paths.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PATHS = {
    "native": {},
    "AVX2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
}
BATCH = 36
VARIANTS = [("channels-last", True), ("channels-last", False), ("NCHW", True), ("NCHW", False)]


def child_pass() -> dict:
    """In a child process: the capability, sgemm and the pass in every variant."""
    import torch
    from bench import best_of, setup_problem
    from torch.utils.flop_counter import FlopCounterMode

    from regprim import SolverConfig

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    sgemm = 2 * 2048**3 / best_of(lambda: a @ b, repeats=5)
    problem = setup_problem(9, SolverConfig())
    gen, code = problem.gen, problem.code
    feature = (problem.f0 + 0.5 * problem.df)[None].expand(BATCH, *problem.f0.shape)

    def once(x0: torch.Tensor) -> None:
        x = x0.clone().requires_grad_(True)
        gen.g(x, code).square().sum().backward()

    with FlopCounterMode(display=False) as counter:
        once(feature)
    flops = counter.get_total_flops()
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "sgemm": sgemm}

    def use(fmt_name: str, onednn: bool) -> torch.Tensor:
        """Put the generator and a batch in one variant; the batch, warmed up."""
        fmt = torch.channels_last if fmt_name == "channels-last" else torch.contiguous_format
        torch.backends.mkldnn.enabled = onednn
        for module in gen.modules():
            module.to(memory_format=fmt)
        x0 = feature.contiguous(memory_format=fmt)
        once(x0)
        return x0

    for fmt_name, onednn in VARIANTS:
        x0 = use(fmt_name, onednn)
        seconds = best_of(lambda x0=x0: once(x0), repeats=5)
        out[f"{fmt_name}, oneDNN {'on' if onednn else 'off'}"] = (seconds, flops / seconds)
    x0 = use(*VARIANTS[0])  # the default again: channels-last, oneDNN
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on SMT siblings of one core gain little over one
    out["one thread"] = best_of(lambda: once(x0), repeats=3)
    out["threads"] = threads
    torch.set_num_threads(threads)
    return out


def siblings() -> str:
    """How the CPUs torch uses share physical cores (Linux): the threads of cpu0's core."""
    path = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
    return path.read_text().strip() if path.is_file() else "unknown"


def run_child(env: dict) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [
        sys.executable,
        "-c",
        f"import sys, json; sys.path.insert(0, {here!r}); "
        "import paths; print(json.dumps(paths.child_pass()))",
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def section_paths(args=None) -> None:
    from bench import explain_command

    print("\n## The SIMD paths side by side (dcgan-faces block3)")
    envs = {name: os.environ | extra for name, extra in PATHS.items()}
    measured: dict[str, dict] = {name: {} for name in PATHS}
    for name, env in envs.items():
        measured[name].update(run_child(env))
    jobs = {
        "n = 9, default (or)": ["--n", "9", "--seed", "3"],
        "n = 9, paper solver": ["--n", "9", "--seed", "3", "--solver", "paper"],
        "whole grid (n = 36)": ["--players", "all", "--seed", "0"],
    }
    for env in envs.values():  # fill the baseline cache outside the timings
        explain_command(["--n", "2"], env)
    for job, job_args in jobs.items():
        for name, env in envs.items():
            measured[name][job] = explain_command(job_args, env)[1]["wall_seconds"]
    names = list(PATHS)
    print(
        "| measure | "
        + " | ".join(f"{n} ({measured[n]['capability']})" for n in names)
        + f" | {names[1]} / {names[0]} |"
    )
    print("| --- | " + " | ".join("---" for _ in names) + " | --- |")
    sgemm = [measured[n]["sgemm"] for n in names]
    print(
        f"| sgemm 2048^3 | {sgemm[0] / 1e9:.0f} GFLOP/s | {sgemm[1] / 1e9:.0f} GFLOP/s "
        f"| {sgemm[0] / sgemm[1]:.2f}x slower |"
    )
    for fmt_name, onednn in VARIANTS:
        key = f"{fmt_name}, oneDNN {'on' if onednn else 'off'}"
        cells = [measured[n][key] for n in names]
        text = [
            f"{t * 1e3:.1f} ms, {r / 1e9:.0f} GFLOP/s ({r / measured[n]['sgemm']:.0%} of sgemm)"
            for n, (t, r) in zip(names, cells, strict=True)
        ]
        print(
            f"| pass, batch {BATCH}, {key} | {text[0]} | {text[1]} "
            f"| {cells[1][0] / cells[0][0]:.2f}x |"
        )
    for job in jobs:
        t = [measured[n][job] for n in names]
        print(f"| {job}: inside explain | {t[0]:.1f} s | {t[1]:.1f} s | {t[1] / t[0]:.2f}x |")
    key = "channels-last, oneDNN on"
    speedup = [measured[n][key][0] / measured[n]["one thread"] for n in names]
    print(
        f"| pass, {key}: {measured[names[0]]['threads']} threads against 1 | "
        f"{1 / speedup[0]:.2f}x faster | {1 / speedup[1]:.2f}x faster | - |"
    )
    print(f"cpu0 shares its core with cpus {siblings()} (one entry: no SMT sibling)")
    for n in names:
        ratio = measured[n]["n = 9, default (or)"] / measured[n]["n = 9, paper solver"]
        print(f"{n}: default / paper solver inside explain {ratio:.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench import machine

    print(f"# regprim benchmarks on {machine()}")
    section_paths()
