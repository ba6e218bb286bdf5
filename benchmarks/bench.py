"""regprim benchmarks: print the numbers recorded in docs/performance.md.

    python benchmarks/bench.py                 # every section
    python benchmarks/bench.py transform       # one section: transform, solver, scaling, flops
    python benchmarks/bench.py scaling --ns 6 8 9

Sections:
  transform  fast OR transform vs the dense 2**n x 2**n matrix of earlier interaction code
  solver     regprim's batched solver vs the paper's procedure (one subset at a time, warm start
             from u(N), same number of steps), with the quality of both
  scaling    `regprim explain` end to end (baseline cached) as n grows: wall, peak memory,
             passes per subset, constraint, universal-matching residual
  flops      FLOPs per generator pass (forward + input gradient), achieved FLOP/s of the solver,
             and this machine's measured sgemm FLOP/s
  planted    recovery of the planted primitives (quality check for every speed-up)
  family     default settings on many members of the randomized planted family
  convergence  projected L-BFGS to tolerance against projected Adam with fixed steps, on the
             planted family and on dcgan-faces n = 9 (passes per subset, objective, wall)
  choices    sparsity term x scale by leakage, sparsity and reconstruction (docs/method-choices.md)
  demo       `make demo`'s run (dcgan-faces n = 9, no verification): the default (OR, played
             per cell), the default on whole renders, the paper's solver (L-BFGS, and Adam 50
             steps) and the whole grid side by side (--old-src: an older checkout's as well)
  grid       dcgan-faces with every cell a player (n = 36), image seeds 0 and 1: time, held-out
             subsets, components, leakage, Fig. 6/7a worst points, energy, L1 against the reach
             reference, stability (seed 0), and docs/images/whole-grid.png
  many       `regprim explain-many`: images per hour on this machine against the worker count
  warm       warm starts across images: 20 faces, each solved cold and from a neighbour's beta
  faithfulness  every solver (paper, paper + noise removal, reach reference, OR-structured) on
             dcgan-faces block3 and block2, eyes-128 and planted-family members: total L1,
             objective, leakage, energy, Fig. 6/7a worst points, stability; --figure draws the
             Pareto figure of docs/faithfulness.md
  denoise    noise removal: projected Adam against the exact linear program (scipy HiGHS)
  paths      the native SIMD path and the AVX2 one side by side: sgemm, the generator pass in
             each memory format with oneDNN on and off, n = 9 default and paper, the whole grid
             (benchmarks/paths.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from regprim import ExplainConfig, SolverConfig, explain, load_model
from regprim.core.interactions import or_interactions
from regprim.explanation.summary import cpu_model
from regprim.generators.planted import DEFAULT_PLAYERS, Planted
from regprim.solvers import Objective
from regprim.solvers.paper import optimise
from regprim.solvers.problem.baseline import baseline
from regprim.solvers.problem.target import build_target


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def best_of(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def dense_or_matrix(n: int) -> torch.Tensor:
    """The 2**n x 2**n matrix M with components = M @ u (Eq. 10), as earlier code built it."""
    size = 2**n
    full = size - 1
    m = torch.zeros(size, size)
    for s in range(1, size):
        sub = s
        while True:
            sign = (-1) ** (s.bit_count() - sub.bit_count())
            m[s, full ^ sub] -= sign
            if sub == 0:
                break
            sub = (sub - 1) & s
    return m


def section_transform(args) -> None:
    print("\n## OR transform: fast butterfly vs dense matrix (D = 4096 numbers per subset)")
    print(f"{'n':>3} {'fast (s)':>10} {'dense (s)':>10} {'speed-up':>9} {'max |diff|':>11}")
    d = 4096
    for n in args.transform_ns:
        u = torch.randn(2**n, d)
        fast = best_of(lambda u=u: or_interactions(u))
        if n <= 12:
            m = dense_or_matrix(n)
            dense = best_of(lambda m=m, u=u: m @ u)
            diff = float((m @ u - or_interactions(u)).abs().max())
            print(f"{n:>3} {fast:>10.4f} {dense:>10.4f} {dense / fast:>8.0f}x {diff:>11.2e}")
        else:
            need = 4 * 4**n / 2**30
            dashes = f"{'-':>10} {'-':>9} {'-':>11}"
            print(f"{n:>3} {fast:>10.4f} {dashes}  (dense matrix alone: {need:.2f} GiB)")


def setup_problem(n: int, cfg: SolverConfig) -> Objective:
    """The dcgan-faces objective of the default image with n centre players."""
    target = build_target(ExplainConfig(n=n, solver=cfg), load_model("dcgan-faces"))
    return Objective(target, cfg)


def section_solver(args) -> None:
    n = args.solver_n
    print(f"\n## Solver vs the paper's procedure (dcgan-faces block3, n = {n})")
    # both rows run the paper's per-subset solver (the default is the OR-structured one), with
    # the same Adam steps: this section measures batching, warm start and window, nothing else
    cfg = SolverConfig(method="paper", optimizer="adam")
    gen = load_model("dcgan-faces")
    start = time.perf_counter()
    ours = explain(ExplainConfig(n=n, solver=cfg), generator=gen, progress=False, verify=False)
    t_ours = time.perf_counter() - start
    paper_cfg = dataclasses.replace(cfg, warm_start="full", chunk=1, crop=False)
    start = time.perf_counter()
    paper = explain(
        ExplainConfig(n=n, solver=paper_cfg), generator=gen, progress=False, verify=False
    )
    t_paper = time.perf_counter() - start
    print(f"{'procedure':<52} {'wall (s)':>9} {'L1 mean':>8} {'max rel err':>12} {'top |Δf|':>9}")
    for name, run, t in [
        ("regprim (chunks of 32, parent warm start, window)", ours, t_ours),
        ("paper (one subset at a time, from u(N), whole map)", paper, t_paper),
    ]:
        u, f0 = run.minimal_features, run.f0
        l1 = float((u - f0).abs().flatten(1).sum(1)[1:].mean())
        top = float(run.components.flatten(1).norm(dim=1).max())
        s = run.summary
        print(f"{name:<52} {t:>9.1f} {l1:>8.1f} {s['rel_error_max']:>12.2e} {top:>9.1f}")
    print(
        f"speed-up: {t_paper / t_ours:.2f}x at {cfg.steps} Adam steps per subset for both "
        f"(solver: {ours.config['solver']['method']} and {paper.config['solver']['method']})"
    )


def section_scaling(args) -> None:
    print("\n## `regprim explain` end to end as n grows (dcgan-faces block3, baseline cached)")
    print(
        f"{'n':>3} {'subsets':>8} {'wall (s)':>9} {'peak MiB':>9} {'passes/subset':>14} "
        f"{'meeting':>8} {'UM residual':>12}"
    )
    baseline(load_model("dcgan-faces"))  # fill the cache outside the timings
    for n in args.ns:
        grid = "6x6" if n <= 36 else "8x8"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            cmd = [
                sys.executable,
                "-m",
                "regprim.app.cli",
                "explain",
                "--n",
                str(n),
                "--grid",
                grid,
                "--out",
                str(out),
                "--quiet",
                "--no-verify",
            ]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            wall = time.perf_counter() - start
            s = json.loads((out / "summary.json").read_text())
        print(
            f"{n:>3} {2**n:>8} {wall:>9.1f} {s['peak_memory_bytes'] / 2**20:>9.0f} "
            f"{s['mean_passes_per_subset']:>14.1f} {s['subsets_meeting_constraint']:>8.3f} "
            f"{s['universal_matching_max_rel_residual']:>12.1e}"
        )


def section_flops(args) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    print("\n## FLOP/s (dcgan-faces block3)")
    steps = 20
    cfg = SolverConfig(optimizer="adam", steps=steps)  # a fixed number of passes
    problem = setup_problem(9, cfg)
    gen, code = problem.gen, problem.code

    def flops_per_pass(f0: torch.Tensor, df: torch.Tensor) -> int:
        alpha = torch.ones(1, *f0.shape, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            image = gen.g(f0 + alpha * df, code)
            torch.autograd.grad(image.pow(2).sum(), alpha)
        return counter.get_total_flops()

    whole = flops_per_pass(problem.full_f0, problem.full_df)
    per_pass = flops_per_pass(problem.f0, problem.df)  # the window the solver renders
    chunk = cfg.chunk
    subsets = torch.arange(1, chunk + 1)
    a0 = torch.ones(chunk, *problem.full_f0.shape)
    optimise(problem, subsets, a0, False)
    t = best_of(lambda: optimise(problem, subsets, a0, False), repeats=2)
    passes = chunk * (steps + 3)  # + the final gradient and 2 curvature probes
    achieved = per_pass * passes / t
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    t_mm = best_of(lambda: a @ b, repeats=5)
    peak = 2 * 2048**3 / t_mm
    print(
        f"FLOPs per pass (forward + input gradient, one subset): {per_pass / 1e6:.0f} MFLOP "
        f"in the players' window ({whole / 1e6:.0f} MFLOP for the whole feature map)"
    )
    print(
        f"solver: {passes} passes in {t:.2f} s = {t / passes * 1e3:.2f} ms/pass, "
        f"{achieved / 1e9:.0f} GFLOP/s"
    )
    print(
        f"machine: sgemm 2048^3 at {peak / 1e9:.0f} GFLOP/s; the solver reaches "
        f"{achieved / peak:.0%} of it"
    )


def section_planted(args) -> None:
    print("\n## Planted recovery (n = 9, default settings)")
    cfg = ExplainConfig(model="planted", players=list(DEFAULT_PLAYERS), baseline_count=200)
    run = explain(cfg, progress=False, verify=False)
    truth = Planted().true_components(run.f, run.f0, run.players)
    smallest = min(float(t.norm()) for t in truth.values())
    others = [k for k in range(1, 2**run.n) if k not in truth]
    worst = max(float(run.components[k].norm()) for k in others)
    cos = min(
        float(torch.nn.functional.cosine_similarity(run.components[k].flatten(), v.flatten(), 0))
        for k, v in truth.items()
    )
    exact = sorted(run.summary["salient"]) == sorted(truth)
    print(
        f"salient set == planted sets: {exact}; min cosine to truth {cos:.5f}; "
        f"largest other component / smallest planted: {worst / smallest:.2%}"
    )


def family_run(seed: int, solver: SolverConfig):
    from regprim.generators.planted_family import planted_family, recovery

    member = planted_family(seed)
    cfg = ExplainConfig(
        model=member.generator.name, players=member.players, grid=member.grid, solver=solver
    )
    start = time.perf_counter()
    run = explain(cfg, generator=member.generator, progress=False, verify=False)
    return recovery(member, run), run.summary, time.perf_counter() - start


def section_family(args) -> None:
    seeds = range(args.family_seed, args.family_seed + args.members)
    print(f"\n## Planted family, default settings, seeds {seeds.start}..{seeds.stop - 1}")
    results = []
    for seed in seeds:
        r, s, wall = family_run(seed, SolverConfig())
        results.append((r, s, wall))
        if not r["passed"]:
            print(f"seed {seed} failed: {r}")
    passed = sum(r["passed"] for r, _, _ in results)
    worst = max(r["other_over_planted"] for r, _, _ in results)
    cos = min(r["min_cosine"] for r, _, _ in results)
    passes = sum(s["mean_passes_per_subset"] for _, s, _ in results) / len(results)
    wall = sum(w for _, _, w in results)
    print(
        f"{passed}/{len(results)} members pass; worst other/planted {worst:.2%}; min cosine "
        f"{cos:.5f}; {passes:.1f} passes per subset; {wall:.0f} s in all"
    )


def section_convergence(args) -> None:
    print(
        "\n## The paper's solver: projected L-BFGS (default) against projected Adam (fixed steps)"
    )
    variants = [("lbfgs (default)", SolverConfig(method="paper"))] + [
        (
            f"adam, {k} steps",
            SolverConfig(method="paper", optimizer="adam", steps=k, full_steps=4 * k),
        )
        for k in (50, 150)
    ]
    seeds = range(args.family_seed, args.family_seed + args.convergence_members)
    print(f"planted family, seeds {seeds.start}..{seeds.stop - 1}:")
    print(f"{'solver':<18} {'pass':>6} {'worst other':>12} {'passes/subset':>14} {'wall (s)':>9}")
    for name, solver in variants:
        rows = [family_run(seed, solver) for seed in seeds]
        passed = sum(r["passed"] for r, _, _ in rows)
        worst = max(r["other_over_planted"] for r, _, _ in rows)
        passes = sum(s["mean_passes_per_subset"] for _, s, _ in rows) / len(rows)
        wall = sum(w for _, _, w in rows)
        print(f"{name:<18} {passed:>3}/{len(rows):<2} {worst:>12.2%} {passes:>14.1f} {wall:>9.1f}")
    print("dcgan-faces block3, n = 9 (side by side, baseline cached):")
    print(
        f"{'solver':<18} {'wall (s)':>9} {'passes/subset':>14} {'converged':>10} "
        f"{'residual med':>13} {'objective':>10} {'salient':>8}"
    )
    gen = load_model("dcgan-faces")
    explain(ExplainConfig(n=2), generator=gen, progress=False, verify=False)  # warm the cache
    for name, solver in variants[:2]:
        start = time.perf_counter()
        run = explain(ExplainConfig(solver=solver), generator=gen, progress=False, verify=False)
        wall = time.perf_counter() - start
        s = run.summary
        print(
            f"{name:<18} {wall:>9.1f} {s['mean_passes_per_subset']:>14.1f} "
            f"{s['subsets_converged']:>10.1%} {s['residual_median']:>13.3f} "
            f"{s['objective']:>10.4g} {len(s['salient']):>8}"
        )


FAITHFUL_SOLVERS = {
    "paper": dict(solver=SolverConfig(method="paper")),
    "paper+denoise": dict(solver=SolverConfig(method="paper"), denoise=True),
    "reach": dict(solver=SolverConfig(method="reach")),
    "or": dict(solver=SolverConfig(method="or")),
    "or-whole": dict(solver=SolverConfig(method="or", or_cell_rows=0)),  # regprim 0.3's steps
}


def faithfulness_row(cfg: ExplainConfig, gen, stable: bool) -> dict:
    from regprim.analysis.metrics import evaluate
    from regprim.pipeline.stability import stability

    start = time.perf_counter()
    run = explain(cfg, generator=gen, progress=False, verify=False)
    wall = time.perf_counter() - start
    ev = evaluate(run, gen).by_name()
    u = run.minimal_features
    target = build_target(cfg, gen)
    objective = float(Objective(target, cfg.solver).check_all(u)[1].sum())
    row = {
        "wall": wall,
        "l1": float((u - run.f0).abs().sum()),
        "objective": objective,
        "leakage": ev["leakage"].value,
        "energy90": ev["energy_90"].value,
        "fig6": ev["irrelevant_components_worst"].value,
        "fig7a": ev["requirement_2_alpha_worst"].value,
        "salient": len(run.salient),
        "meeting": float(run.checked[1].lt(cfg.solver.constraint).float().mean()),
        "stability": float("nan"),
    }
    if stable:
        result = stability(cfg, generator=gen)
        row["stability"] = result["denoised" if cfg.denoise else "raw"]["matched_cosine"]
    return row


def section_faithfulness(args) -> None:
    from regprim.generators.planted_family import planted_family

    print("\n## Faithfulness of every solver (image seed 1 unless stated; docs/faithfulness.md)")
    cases = [
        ("dcgan-faces block3", dict(model="dcgan-faces", seed=1), None, True),
        ("dcgan-faces block2", dict(model="dcgan-faces", layer="block2", seed=1), None, False),
        ("eyes-128 block3", dict(model="eyes-128", class_index="green", seed=1), None, False),
    ]
    for seed in range(args.family_seed, args.family_seed + 3):
        member = planted_family(seed)
        spec = dict(model=member.generator.name, players=member.players, grid=member.grid)
        cases.append((f"planted family {seed}", spec, member.generator, False))
    head = (
        f"{'case':<22} {'solver':<14} {'wall':>6} {'total L1':>9} {'objective':>10} "
        f"{'meet':>5} {'leakage':>8} {'90% E':>6} {'Fig6 w':>7} {'Fig7a w':>8} {'salient':>7} "
        f"{'stab.':>6}"
    )
    print(head)
    rows = []
    cases = [c for c in cases if not args.cases or any(k in c[0] for k in args.cases)]
    for case, spec, gen, stable in cases:
        gen = gen or load_model(spec["model"], spec.get("layer"))
        explain(
            ExplainConfig(**spec, n=2) if "players" not in spec else ExplainConfig(**spec),
            generator=gen,
            progress=False,
            verify=False,
        )  # warm the baseline cache
        for name, extra in FAITHFUL_SOLVERS.items():
            if args.solvers and name not in args.solvers:
                continue
            r = faithfulness_row(ExplainConfig(**spec, **extra), gen, stable)
            rows.append((case, name, r))
            print(
                f"{case:<22} {name:<14} {r['wall']:>6.1f} {r['l1']:>9.4g} "
                f"{r['objective']:>10.4g} {r['meeting']:>5.2f} {r['leakage']:>8.2g} "
                f"{r['energy90']:>6.0f} {r['fig6']:>7.3f} {r['fig7a']:>8.3g} "
                f"{r['salient']:>7} {r['stability']:>6.3f}",
                flush=True,
            )
    if args.figure:
        pareto_figure(rows, Path(args.figure))


def pareto_figure(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"paper": "o", "paper+denoise": "s", "reach": "^", "or": "*"}
    cases = sorted({c for c, _, _ in rows})
    colors = dict(zip(cases, plt.cm.tab10.colors, strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for case, name, r in rows:
        base = next(x["l1"] for c, n, x in rows if c == case and n == "paper")
        for ax, y in zip(axes, ("leakage", "fig6"), strict=True):
            ax.scatter(
                r["l1"] / base,
                max(r[y], 1e-6),
                marker=markers[name],
                s=70,
                color=colors[case],
                label=f"{name}" if case == cases[0] else None,
            )
    for ax, label in zip(
        axes, ("median leakage (Requirement 1)", "Fig. 6 worst point"), strict=True
    ):
        ax.set_xlabel("total L1 of the minimal features / the paper solver's")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8, title="solver (marker)")
    handles = [plt.Line2D([], [], color=colors[c], marker="o", ls="") for c in cases]
    axes[1].legend(handles, cases, fontsize=7, title="case (colour)")
    fig.suptitle("Sparsity against exclusivity: lower left is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def explain_command(args: list[str], env: dict | None = None) -> tuple[float, dict]:
    """``regprim explain ARGS --quiet --no-verify`` in a fresh process (into a temporary
    folder): the command's wall seconds and the run's summary.json."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "regprim.app.cli", "explain", "--out", f"{tmp}/run"]
        start = time.perf_counter()
        subprocess.run(
            [*cmd, "--quiet", "--no-verify", *args], check=True, capture_output=True, env=env
        )
        wall = time.perf_counter() - start
        return wall, json.loads(Path(f"{tmp}/run/summary.json").read_text())


def section_demo(args) -> None:
    print(
        "\n## make demo's run, side by side (dcgan-faces block3, n = 9, `--no-verify`, "
        "the whole command, baseline cached)"
    )
    variants = {
        "or (default)": [],
        "or, whole renders (--or-cell-rows 0)": ["--or-cell-rows", "0"],
        "paper, L-BFGS": ["--solver", "paper"],
        "paper, Adam 50 steps": ["--solver", "paper", "--optimizer", "adam"],
    }
    runs = [(name, extra, None) for name, extra in variants.items()]
    runs.append(("or, whole grid (--n 36)", ["--n", "36"], None))
    if args.old_src:  # an older checkout's src/, e.g. `git worktree add /tmp/old 73cd01e`
        runs.insert(0, (f"older checkout ({args.old_src})", [], args.old_src))
        runs.append((f"older checkout, whole grid ({args.old_src})", ["--n", "36"], args.old_src))
    baseline(load_model("dcgan-faces"))  # fill the cache outside the timings
    walls = {}
    print(f"{'solver':<40} {'command (s)':>12} {'in explain (s)':>15} {'salient':>8}")
    inside = {}
    for name, extra, src in runs:
        env = os.environ | ({"PYTHONPATH": src} if src else {})
        walls[name], s = explain_command(["--n", "9", *extra], env)
        inside[name] = s["wall_seconds"]
        print(f"{name:<40} {walls[name]:>12.1f} {inside[name]:>15.1f} {len(s['salient']):>8}")
    first = next(iter(walls))
    print(
        "command relative to the first row: "
        + ", ".join(f"{k} {v / walls[first]:.2f}x" for k, v in walls.items())
    )
    or_, paper = "or (default)", "paper, L-BFGS"
    print(
        f"or / paper L-BFGS: command {walls[or_] / walls[paper]:.2f}x, "
        f"in explain {inside[or_] / inside[paper]:.2f}x"
    )


def section_grid(args) -> None:
    """The whole grid: time, held-out subsets, and the faithfulness table of
    docs/faithfulness.md ("The whole grid") for image seeds 0 and 1, with its figure."""
    from regprim.analysis.metrics import evaluate
    from regprim.solvers.or_objective import mean_alpha

    print("\n## The whole grid: dcgan-faces, every cell a player (n = 36)")
    gen = load_model("dcgan-faces")
    for seed in (0, 1):
        cfg = ExplainConfig(players="all", seed=seed)
        explain(ExplainConfig(seed=seed, n=2), generator=gen, progress=False, verify=False)
        start = time.perf_counter()
        run = explain(cfg, generator=gen, progress=False, verify=False)
        wall = time.perf_counter() - start
        s = run.summary
        table = run.table
        orders = table.orders.tolist()
        by_order = {o: orders.count(o) for o in sorted(set(orders))}
        print(
            f"seed {seed}: wall {wall:.1f} s; {s['subsets_checked']}: "
            f"{s['subsets_meeting_constraint']:.1%} meet the constraint (worst relative error "
            f"{s['rel_error_max']:.2g}); universal matching "
            f"{s['universal_matching_max_rel_residual']:.1e}; {len(orders)} non-zero "
            f"components by order {by_order}; {s['rounded_numbers']} numbers rounded; stages "
            f"{s['stage_seconds']}"
        )
        start = time.perf_counter()
        ev = evaluate(run, gen).by_name()
        # the weighted mean over subsets of ||u(S) - f0||_1, against the reach reference's
        obj = Objective(build_target(cfg, gen), cfg.solver)
        rule, support, df = cfg.solver.subset_weights, obj.reach_sets, (run.f - run.f0).abs()
        l1 = float((mean_alpha(run.tensors["beta"], rule, obj.reach_order) * df).sum())
        l1_reach = float((mean_alpha(support.float(), rule, obj.reach_order) * df).sum())
        top = table.top_k(10)
        print(
            f"  metrics in {time.perf_counter() - start:.0f} s: leakage "
            f"{ev['leakage'].value:.2g}; Fig. 6 worst {ev['irrelevant_components_worst'].value:.3f}"
            f"; Fig. 7a worst {ev['requirement_2_alpha_worst'].value:.3f}; components carrying "
            f"90% of the energy {ev['energy_90'].value:.0f}; L1 per subset {l1:.4g} = "
            f"{l1 / l1_reach:.2f}x the reach reference's ({l1_reach:.4g}); top 10 by norm: "
            f"orders {[k.bit_count() for k in top]}, cells "
            f"{[[run.players[i] for i in range(run.n) if k >> i & 1] for k in top]}"
        )
        if seed == 0:
            where_figure(run, obj, Path("docs/images/whole-grid.png"))
            from regprim.pipeline.stability import stability

            st = stability(cfg, repeats=2, generator=gen)["raw"]
            print(
                f"  stability (2 repeats): matched cosine {st['matched_cosine']:.3f}, region "
                f"Jaccard {st['matched_region_jaccard']:.3f}, top-10 set Jaccard "
                f"{st['topk_set_jaccard']:.3f}"
            )


def where_figure(run, obj, path: Path) -> None:
    """Why the largest whole-grid components sit where they sit: per cell, how far the baseline
    image is from the target (the squared error per pixel that the cell's numbers must undo),
    the energy of the components acting on it (each component's squared norm shared among its
    cells; Appendix H's L1 share ranks the cells less alike, 0.47, since many small components
    add up there), and the action regions of the top 8; prints the rank correlation of the
    first two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regprim.present.figures import cell_map, draw_grid, to_rgb

    table, n = run.table, run.n
    base = obj.cell_base.tolist()
    cells = ((table.masks[:, None] >> torch.arange(n)) & 1).double()  # (components, n)
    energy = ((table.norms.double() ** 2 / cells.sum(1)) @ cells).tolist()  # squared norm shared

    def ranks(values: list[float]) -> torch.Tensor:
        return torch.tensor(values).argsort().argsort().double()

    rho = float(torch.corrcoef(torch.stack([ranks(base), ranks(energy)]))[0, 1])
    print(
        f"  Spearman correlation of baseline error and component energy over the cells: {rho:.2f}"
    )
    top = table.top_k(8)
    fig, axes = plt.subplots(2, 6, figsize=(13, 5.6))
    for ax in axes.flat:
        ax.axis("off")
    span = (float(run.image.min()), float(run.image.max()))
    axes[0, 0].imshow(to_rgb(run.image, span))
    axes[0, 0].set_title("target x", fontsize=8)
    axes[0, 1].imshow(to_rgb(run.baseline_image, span))
    axes[0, 1].set_title("baseline g(f0)", fontsize=8)
    axes[0, 2].imshow(cell_map(base, run.grid, run.players), cmap="magma")
    axes[0, 2].set_title("baseline error per cell", fontsize=8)
    axes[0, 3].imshow(cell_map(energy, run.grid, run.players), cmap="magma")
    axes[0, 3].set_title(f"component energy per cell\n(Spearman {rho:.2f})", fontsize=8)
    for j, k in enumerate(top):
        ax = axes.flat[4 + j]
        ax.imshow(to_rgb(run.image, span))
        cells = [run.players[i] for i in range(n) if k >> i & 1]
        draw_grid(ax, run.grid, cells, highlight=cells)
        ax.set_title(f"#{j + 1}: |S|={k.bit_count()}, |Δf|={table.norm(k):.3g}", fontsize=8)
    fig.suptitle(
        "dcgan-faces, every cell a player: the largest components act where the baseline is "
        "furthest from the target",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"  figure: {path}")


def section_many(args) -> None:
    from regprim.pipeline.dataset import explain_many, items_of

    print("\n## Many images: dcgan-faces (default settings, no verification) per worker count")
    seeds = list(range(100, 100 + args.images))
    baseline(load_model("dcgan-faces"))
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            rows = explain_many(
                ExplainConfig(), items_of(seeds), tmp, workers=workers, verify=False, progress=False
            )
            wall = time.perf_counter() - start
        ok = sum(r["status"] == "ok" for r in rows)
        print(
            f"{workers} worker(s): {ok} images in {wall:.0f} s = {3600 * ok / wall:.0f} images/hour"
        )


def section_warm(args) -> None:
    """Warm starts across images: each face's solve from a solved neighbour's beta (its first
    image, solved cold), against a cold start, same steps. The start: beta = or_init where the
    neighbour kept a number for a player, ``low`` where it dropped it (the neighbour's snapped
    beta itself, 0 or 1, was worse still: docs/performance.md)."""
    from regprim.solvers.or_structured import ORSolver, start_state

    faces = args.images
    print(
        f"\n## Warm starts: dcgan-faces n = 9, seeds 0..{faces - 1}, each solve cold and from "
        "seed 0's beta (300 steps each)"
    )
    gen = load_model("dcgan-faces")

    def solve(seed: int, prior: torch.Tensor | None, low: float):
        cfg = ExplainConfig(seed=seed)
        obj = Objective(build_target(cfg, gen), cfg.solver)
        state = start_state(cfg.solver, obj.reach_sets.float())
        if prior is not None:
            kept = obj.crop(prior[None])[0] > 0
            state["beta"] = torch.where(kept, cfg.solver.or_init, low) * obj.reach_sets
        start = time.perf_counter()
        mf = ORSolver.solve(obj, resume=state, progress=False)
        seconds = time.perf_counter() - start
        return mf, seconds, float((mf.u - mf.u[0]).abs().sum())

    anchor, _, _ = solve(0, None, 0.0)
    rows = []
    for seed in range(1, faces):
        cold, t_cold, l1_cold = solve(seed, None, 0.0)
        warm, t_warm, l1_warm = solve(seed, anchor.beta, args.low)
        rows.append((t_cold, l1_cold, t_warm, l1_warm, warm.meets.all() and cold.meets.all()))
        print(
            f"seed {seed:>2}: cold {t_cold:5.1f} s L1 {l1_cold:9.6g} | warm {t_warm:5.1f} s "
            f"L1 {l1_warm:9.6g} ({l1_warm / l1_cold - 1:+.1%})",
            flush=True,
        )
    count = len(rows)
    print(
        f"{count} faces: mean solve {sum(r[0] for r in rows) / count:.1f} s cold, "
        f"{sum(r[2] for r in rows) / count:.1f} s warm; warm L1 / cold L1 mean "
        f"{sum(r[3] / r[1] for r in rows) / count:.3f}, lower on "
        f"{sum(r[3] < r[1] for r in rows)} of {count}; every subset meets the constraint in "
        f"{sum(bool(r[4]) for r in rows)} of {count}"
    )


def section_choices(args) -> None:
    from regprim.analysis import metrics

    print("\n## Sparsity term x scale (dcgan-faces block3), by the faithfulness metrics")
    print(
        f"{'n':>2} {'sparsity':>9} {'reduction':>9} {'leak med':>9} {'leak o1':>8} "
        f"{'leak o2':>8} {'90% energy':>10} {'2-alpha':>8} {'max rel err':>11} {'wall':>6}"
    )
    gen = load_model("dcgan-faces")
    for n in args.choice_ns:
        for sparsity in ("l1-delta", "l1"):
            for reduction in ("sum", "mean"):
                cfg = ExplainConfig(
                    n=n, solver=SolverConfig(sparsity=sparsity, reduction=reduction)
                )
                start = time.perf_counter()
                run = explain(cfg, generator=gen, progress=False, verify=False)
                wall = time.perf_counter() - start
                v = metrics.Scorer(run, gen)
                # leakage over every component but N, so that low orders are measured too
                masks = [k for k in run.ranked if k != 2**n - 1]
                leak = metrics.leakage(v, masks, top=len(masks), contexts=4)
                by_order = leak.details["median_by_order"]
                energy = metrics.sparsity(v, []).value
                alpha = metrics.requirement_2_alpha(v)[0].value
                print(
                    f"{n:>2} {sparsity:>9} {reduction:>9} {leak.value:>9.3g} "
                    f"{by_order.get('1', float('nan')):>8.3g} "
                    f"{by_order.get('2', float('nan')):>8.3g} {energy:>10.1%} {alpha:>8.2g} "
                    f"{run.summary['rel_error_max']:>11.2e} {wall:>6.1f}"
                )


def section_denoise(args) -> None:
    import numpy as np
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, hstack, identity, vstack

    from regprim.solvers.denoise import remove_noise

    print("\n## Noise removal: projected Adam (100 steps) against the exact linear program")
    n, dims = 9, args.lp_dims
    gen = load_model("dcgan-faces")
    run = explain(ExplainConfig(n=n), generator=gen, progress=False, verify=False)
    u = run.tensors["minimal_features"].flatten(1)
    f0 = run.f0.flatten()
    tau = 0.04 * (u[-1] - f0).abs()
    live = torch.nonzero(tau > 0).flatten()
    pick = live[torch.randperm(len(live), generator=torch.Generator().manual_seed(0))[:dims]]
    block = u[:, pick].contiguous()
    start = time.perf_counter()
    adam = remove_noise(block, f0[pick], tau_rel=0.04, steps=100).u
    t_adam = time.perf_counter() - start
    a = csr_matrix(dense_or_matrix(n).numpy()[1:])  # rows: non-empty S; I = a @ w
    rows, size = a.shape
    # variables [q (2**n), t (rows)]: min sum t  s.t.  |a (u + q)| <= t,  |q| <= tau, q_0 = 0
    a_ub = vstack([hstack([a, -identity(rows)]), hstack([-a, -identity(rows)])]).tocsc()
    cost = np.r_[np.zeros(size), np.ones(rows)]
    lp_total, start = 0.0, time.perf_counter()
    for j in range(dims):
        w = block[:, j].double().numpy()
        b = tau[pick[j]].item()
        bounds = [(0, 0)] + [(-b, b)] * (size - 1) + [(0, None)] * rows
        res = linprog(cost, A_ub=a_ub, b_ub=np.r_[-(a @ w), a @ w], bounds=bounds, method="highs")
        lp_total += res.fun
    t_lp = time.perf_counter() - start
    raw = float(or_interactions(block).abs().sum())
    adam_l1 = float(or_interactions(adam).abs().sum())
    d = u.shape[1]
    print(
        f"{dims} numbers of dcgan-faces n = 9, tau = 0.04 |u(N) - f0|: total L1 of their "
        f"components raw {raw:.4g}, Adam {adam_l1:.4g}, LP optimum {lp_total:.4g} "
        f"(Adam {adam_l1 / lp_total - 1:+.1%} above it)"
    )
    print(
        f"time per number: Adam {t_adam / dims * 1e3:.2f} ms (vectorised over the block), "
        f"LP {t_lp / dims * 1e3:.1f} ms; all {d} numbers: Adam ~{t_adam / dims * d:.0f} s, "
        f"LP ~{t_lp / dims * d / 60:.0f} min"
    )


SECTIONS = {
    "transform": section_transform,
    "solver": section_solver,
    "scaling": section_scaling,
    "flops": section_flops,
    "planted": section_planted,
    "family": section_family,
    "convergence": section_convergence,
    "faithfulness": section_faithfulness,
    "demo": section_demo,
    "grid": section_grid,
    "many": section_many,
    "warm": section_warm,
    "choices": section_choices,
    "denoise": section_denoise,
}


def section_paths(args) -> None:
    from paths import section_paths as paths

    paths(args)


SECTIONS["paths"] = section_paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", choices=[*SECTIONS, []], default=[])
    parser.add_argument("--ns", type=int, nargs="+", default=[6, 8, 9, 10, 12])
    parser.add_argument("--transform-ns", type=int, nargs="+", default=list(range(6, 15)))
    parser.add_argument("--solver-n", type=int, default=9)
    parser.add_argument("--choice-ns", type=int, nargs="+", default=[5, 9])
    parser.add_argument("--lp-dims", type=int, default=64, help="numbers solved by the LP")
    parser.add_argument("--members", type=int, default=200, help="family members (family)")
    parser.add_argument("--family-seed", type=int, default=2000, help="first family seed")
    parser.add_argument("--convergence-members", type=int, default=20)
    parser.add_argument("--figure", help="faithfulness: write the Pareto figure here (PNG)")
    parser.add_argument("--cases", nargs="*", help="faithfulness: only cases containing these")
    parser.add_argument("--solvers", nargs="*", help="faithfulness: only these solvers")
    parser.add_argument("--old-src", help="demo: also time an older checkout's src/ folder")
    parser.add_argument(
        "--images", type=int, default=6, help="many: images per worker count; warm: faces"
    )
    parser.add_argument(
        "--low", type=float, default=0.5, help="warm: start of the numbers the neighbour dropped"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"# regprim benchmarks on {machine()}")
    for name in args.sections or SECTIONS:
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
