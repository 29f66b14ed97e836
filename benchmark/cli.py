"""The command line: ``python -m benchmark {list,run,leaderboard,compare,rerun-diff,check-dense,train-dense,
train-classifier,prune,dipgo-convergence,latency}``.

Mistakes in the input (unknown names, malformed values, unwritable paths, missing CUDA) end with one
``error: ...`` line on stderr and exit code 2; a run in which some cell failed exits with 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Sequence

from benchmark.api import BenchmarkError, NMPattern, RunOptions, StructuralTarget
from benchmark.presets import PRESETS, get_preset

USER_ERROR = 2
CELL_FAILED = 1
INTERRUPTED = 130
EXAMPLES = """\
examples:
  python -m benchmark list
  python -m benchmark run --methods all --backbones all --preset tiny
  python -m benchmark run --methods dense,asp,sparsedm+dipgo --backbones uvit --out runs/mine --quiet
  python -m benchmark run --methods all --seeds 0,1,2 --out runs/tiny-3seeds --jobs 2
  python -m benchmark run --methods all --seeds 0,1,2 --executor ray --ray-address auto
  python -m benchmark run --methods dipgo@0.3,dipgo@0.7,diff-pruning@0.3,diff-pruning+dipgo --backbones ddpm
  python -m benchmark leaderboard runs/tiny --format csv
  python -m benchmark train-dense --backbone ddpm --preset tiny --steps 6000
  python -m benchmark prune --method diff-pruning@layer=0.3 --backbone ddpm --preset cifar10 --batch-size 1
  python -m benchmark latency --backbone uvit --preset cifar10 --device cuda --batch-sizes 1,16,64,128
"""


class _Parser(argparse.ArgumentParser):
    """Argument errors print one line, like every other input error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(USER_ERROR, f"error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def seed_int(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def structural_target(text: str) -> StructuralTarget:
    try:
        return StructuralTarget.parse(text)
    except BenchmarkError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def seed_list(text: str) -> list[int]:
    seeds = [seed_int(part.strip()) for part in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct, got {text}")
    return seeds


def step_list(text: str) -> list[int]:
    steps = [positive_int(part.strip()) for part in text.split(",")]
    if len(set(steps)) != len(steps):
        raise argparse.ArgumentTypeError(f"budgets must be distinct, got {text}")
    return steps


def batch_sizes(text: str) -> list[int]:
    return [positive_int(part.strip()) for part in text.split(",")]


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m benchmark",
        description="Benchmark pruning methods for diffusion models on equal terms: FID, MACs and latency.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=help, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
        )

    command("list", "list the registered methods and backbones").set_defaults(handler=list_command)

    run = command("run", "prune, train and measure every (backbone, method) cell; resumes finished cells")
    run.add_argument("--methods", default="all", metavar="LIST",
                     help="'all' or a comma list; 'a+b' chains methods; 'name@value' sets a method's knob, one "
                          "cell per operating point, e.g. dipgo@0.3,dipgo@0.7,diff-pruning@0.3 (default: all)")
    run.add_argument("--backbones", default="all", metavar="LIST",
                     help="'all' (those `list` marks 'in all') or a comma list (default: all)")
    run.add_argument("--preset", default="tiny", choices=list(PRESETS), help="budget preset (default: tiny)")
    run.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<preset>)")
    seeds = run.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=seed_int, metavar="N",
                       help="seed for data order, noise, sampling and the FID bootstrap (default: 0)")
    seeds.add_argument("--seeds", type=seed_list, metavar="LIST",
                       help="comma list of seeds, each its own cell; the leaderboard aggregates them (e.g. 0,1,2)")
    run.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    add_method_options(run)
    run.add_argument("--fid-samples", type=positive_int, metavar="N", help="images per FID (default: the preset's)")
    run.add_argument("--train-steps", type=step_list, metavar="LIST",
                     help="fine-tuning steps per weight-training method, or a comma list of budgets, each its own "
                          "cell, e.g. 300,1000,3000; methods that train no weights run once (default: the preset's)")
    run.add_argument("--sample-steps", type=positive_int, metavar="N",
                     help="DDIM steps per image, for FID, latency and block schedules (default: the preset's)")
    run.add_argument("--checkpoint", action="append", default=[], metavar="BACKBONE=PATH",
                     help="dense starting checkpoint for a backbone (repeatable)")
    run.add_argument("--executor", default="local", choices=["local", "ray"],
                     help="local: cells on this machine (default); ray: cells in Ray actors, on a local or given "
                          "cluster")
    run.add_argument("--jobs", type=positive_int, metavar="N",
                     help="cells computed at once: worker processes (local; 1 = in this process) or Ray actors "
                          "(default: one per core on CPU with one thread each, 1 on CUDA; Ray: the cluster's CPUs)")
    run.add_argument("--ray-address", metavar="ADDR",
                     help="Ray cluster to join, e.g. auto or ray://head:10001 (default: $RAY_ADDRESS, else a local "
                          "cluster sized to this machine)")
    run.add_argument("--quiet", action="store_true", help="no progress bars or per-cell lines")
    run.set_defaults(handler=run_command)

    board = command("leaderboard", "print a run's leaderboard; (re)write leaderboard.{md,csv,json,html} and its plots")
    board.add_argument("run_dir", type=Path, metavar="DIR")
    board.add_argument("--format", default="md", choices=["md", "csv", "json", "html"],
                       help="what to print (default: md); every format is written beside the cells")
    board.set_defaults(handler=leaderboard_command)

    dense = command("train-dense", "train a dense starting checkpoint (by default where `run` looks for it)")
    dense.add_argument("--backbone", required=True)
    dense.add_argument("--preset", default="tiny", choices=list(PRESETS), help="default: tiny")
    dense.add_argument("--steps", type=positive_int, metavar="N",
                       help="training steps (default: the preset's dense_train_steps)")
    dense.add_argument("--seed", type=seed_int, default=0, metavar="N", help="default: 0")
    dense.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    dense.add_argument("--out", type=Path, metavar="PATH", help="checkpoint path (default: the cache `run` reads)")
    dense.add_argument("--resume", action="store_true",
                       help="continue from the training state saved every 500 steps beside --out")
    dense.add_argument("--quiet", action="store_true", help="no progress bar")
    dense.set_defaults(handler=train_dense_command)

    classifier = command("train-classifier", "train the digit classifier behind the prompt-adherence column and "
                                             "print its held-out accuracy")
    classifier.add_argument("--steps", type=positive_int, default=3000, metavar="N", help="default: 3000")
    classifier.add_argument("--seed", type=seed_int, default=0, metavar="N", help="default: 0")
    classifier.add_argument("--out", type=Path, metavar="PATH",
                            help="default: the shipped file benchmark/metrics/weights/mnist16-classifier.pt")
    classifier.set_defaults(handler=train_classifier_command)

    prune = command("prune", "apply one method or chain to one backbone's dense model without fine-tuning and show "
                             "what it changed (params, MACs, per layer or per step); save the pruned model")
    prune.add_argument("--method", required=True, metavar="SPEC",
                       help="a method, name@value operating point or a+b chain, e.g. diff-pruning@layer=0.3")
    prune.add_argument("--backbone", required=True)
    prune.add_argument("--preset", default="tiny", choices=list(PRESETS), help="default: tiny")
    prune.add_argument("--checkpoint", metavar="PATH",
                       help="dense weights (default: the reference `run` uses; random weights where the preset has none)")
    prune.add_argument("--seed", type=seed_int, default=0, metavar="N", help="default: 0")
    prune.add_argument("--batch-size", type=positive_int, metavar="N",
                       help="images per batch of a method's own search (default: the preset's)")
    prune.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    prune.add_argument("--out", type=Path, metavar="FILE",
                       help="where the pruned model goes (default: runs/prune/BACKBONE-PRESET-METHOD.pt)")
    prune.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    prune.add_argument("--quiet", action="store_true", help="no progress bars")
    add_method_options(prune)
    prune.set_defaults(handler=prune_command)

    compare = command("compare", "test two rows of a run against each other per backbone (Welch's t over seeds, "
                               "ties marked), or with --claims the comparisons the papers claim")
    compare.add_argument("run_dir", type=Path, metavar="DIR")
    compare.add_argument("rows", nargs="*", metavar="METHOD", help="two rows (methods as the leaderboard names them)")
    compare.add_argument("--claims", action="store_true",
                         help="the papers' claims on FID and fid_to_dense, then the equal-latency comparisons")
    compare.add_argument("--metric", default="fid", choices=["fid", "fid_to_dense"], help="default: fid")
    compare.set_defaults(handler=compare_command)

    dense_check = command("check-dense", "is a dense reference converged? FID must not worsen with more DDIM steps "
                                          "and stay within 2x the real-vs-real floor")
    dense_check.add_argument("--backbones", default="all", metavar="LIST", help="'all' or a comma list (default: all)")
    dense_check.add_argument("--preset", default="tiny", choices=list(PRESETS), help="default: tiny")
    dense_check.add_argument("--steps", type=batch_sizes, default=[20, 50, 100], metavar="LIST",
                             help="DDIM step counts (default: 20,50,100)")
    dense_check.add_argument("--samples", type=positive_int, metavar="N", help="images per FID (default: the preset's)")
    dense_check.add_argument("--seed", type=seed_int, default=7,
                             help="sampling noise and bootstrap seed; pick one no published run used (default: 7)")
    dense_check.add_argument("--checkpoint", action="append", default=[], metavar="BACKBONE=PATH|HUB_ID")
    dense_check.add_argument("--grids", type=Path, metavar="DIR", help="write each backbone's sample grid here")
    dense_check.set_defaults(handler=check_dense_command)

    rerun = command("rerun-diff", "two runs side by side: how far a rerun moved each FID and speedup (cells with "
                                  "equal config hashes)")
    rerun.add_argument("first", type=Path, metavar="DIR")
    rerun.add_argument("second", type=Path, metavar="DIR")
    rerun.add_argument("--any-config", action="store_true",
                       help="also pair cells of the same name whose config hashes differ (their config column says so)")
    rerun.set_defaults(handler=rerun_diff_command)

    cost = command("cost", "what a run's finished cells cost per backbone: worker seconds, the dearest cell, wall "
                           "time over the sessions that ran them")
    cost.add_argument("run_dir", type=Path, metavar="DIR")
    cost.add_argument("--gap", type=positive_int, default=5, metavar="MIN",
                      help="cells further apart than this many minutes start a new session (default: 5)")
    cost.set_defaults(handler=cost_command)

    convergence = command("dipgo-convergence", "train DiP-GO's pruner on each backbone's dense reference and show when "
                                               "its learned schedules stop changing")
    convergence.add_argument("--backbones", default="all", metavar="LIST", help="'all' or a comma list (default: all)")
    convergence.add_argument("--preset", default="tiny", choices=list(PRESETS), help="default: tiny")
    convergence.add_argument("--steps", type=positive_int, default=500, metavar="N", help="pruner steps (default: 500)")
    convergence.add_argument("--every", type=positive_int, default=25, metavar="N", help="steps per line (default: 25)")
    convergence.add_argument("--seed", type=seed_int, default=0, metavar="N", help="default: 0")
    convergence.set_defaults(handler=dipgo_convergence_command)

    latency = command("latency", "time a backbone dense and 2:4-sparse at several batch sizes")
    latency.add_argument("--backbone", required=True)
    latency.add_argument("--preset", default="tiny", choices=list(PRESETS), help="default: tiny")
    latency.add_argument("--batch-sizes", type=batch_sizes, default=[1, 16, 64, 128], metavar="LIST",
                         help="comma list (default: 1,16,64,128)")
    latency.add_argument("--device", default="cuda", choices=["cpu", "cuda"], help="default: cuda")
    latency.add_argument("--variant", help="another layout of the backbone at the preset (dit at imagenet256: "
                                           "dit-s2, dit-b2, dit-xl2); default: the preset's own")
    latency.add_argument(
        "--out", type=Path, metavar="FILE", help="also write the report, with versions and device, as JSON"
    )
    latency.set_defaults(handler=latency_command)
    return parser


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """The options methods read (shared by ``run`` and ``prune``)."""
    parser.add_argument("--pattern", default="2:4", metavar="N:M", help="N:M sparsity pattern (default: 2:4)")
    parser.add_argument("--srste-decay", type=non_negative_float, default=RunOptions.srste_decay, metavar="X",
                        help=f"SR-STE decay on pruned weights (default: {RunOptions.srste_decay})")
    parser.add_argument("--sparsedm-weight", type=non_negative_float, default=RunOptions.sparsedm_weight, metavar="X",
                        help=f"weight of SparseDM's teacher loss (default: {RunOptions.sparsedm_weight})")
    parser.add_argument("--dipgo-target", type=fraction, default=RunOptions.dipgo_target, metavar="X",
                        help=f"trajectory MACs ratio block skipping aims for (default: {RunOptions.dipgo_target})")
    parser.add_argument("--structural-target", type=structural_target, default=RunOptions().structural_target,
                        metavar="X", help="MACs ratio structural pruning aims for, or layer=R to remove the share R "
                                          f"of every layer's channels (default: {RunOptions().structural_target})")
    parser.add_argument("--diffpruning-threshold", type=fraction, default=RunOptions.diffpruning_threshold,
                        metavar="X", help="Diff-Pruning stops adding timesteps once the loss is below this share "
                                          f"of its maximum (default: {RunOptions.diffpruning_threshold})")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BenchmarkError as e:
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted (a run keeps its finished cells: the same command resumes it)", file=sys.stderr)
        return INTERRUPTED


def list_command(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from benchmark.plugins import build_registries

    registries = build_registries()
    rows = [
        (kind, entry.obj.name, entry.obj.version, getattr(entry.obj, "knob", None) or "",
         "yes" if getattr(entry.obj, "in_all", True) else "no (when named)", entry.source,
         registries.versions.get(entry.source, ""), entry.obj.description)
        for kind, registry in (("backbone", registries.backbones), ("method", registries.methods))
        for entry in registry.entries()
    ]
    headers = ("kind", "name", "version", "knob (name@value)", "in all", "plugin", "plugin version", "description")
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


def run_command(args: argparse.Namespace) -> int:
    from benchmark.grid.execute import make_executor
    from benchmark.grid.plan import expand_methods
    from benchmark.grid.run import label, run_grid
    from benchmark.plugins import build_registries

    registries = build_registries()
    preset = get_preset(args.preset)
    if args.sample_steps:
        from benchmark.diffusion import Diffusion

        preset = dataclasses.replace(preset, sample_steps=args.sample_steps)
        Diffusion.for_preset(preset)  # a BenchmarkError naming the allowed range, before any cell runs
    methods = expand_methods(registries.methods, args.methods)
    backbones = registries.backbones.select(args.backbones)
    options = dataclasses.replace(
        method_options(args),
        fid_samples=args.fid_samples,
        checkpoints=parse_checkpoints(args.checkpoint, registries.backbones.names()),
    )
    out_dir = args.out or Path("runs") / preset.name
    executor = make_executor(args.executor, args.ray_address, args.jobs, args.device)
    summary = run_grid(
        registries, methods, backbones, preset, options, run_seeds(args), args.device, out_dir,
        progress=not args.quiet, executor=executor, budgets=args.train_steps,
    )
    print(
        f"{len(summary.ok)} ok, {len(summary.failed)} failed, {len(summary.skipped)} skipped (already complete)"
        + (f", {len(summary.claimed)} being computed by another invocation" if summary.claimed else "")
        + f"; leaderboard: {out_dir / 'leaderboard.md'}"
    )
    for key in summary.failed:
        print(f"failed: {label(key)} (error and traceback in its cell file)", file=sys.stderr)
    return CELL_FAILED if summary.failed else 0


def method_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        pattern=NMPattern.parse(args.pattern),
        srste_decay=args.srste_decay,
        sparsedm_weight=args.sparsedm_weight,
        dipgo_target=args.dipgo_target,
        structural_target=args.structural_target,
        diffpruning_threshold=args.diffpruning_threshold,
    )


def run_seeds(args: argparse.Namespace) -> list[int]:
    if args.seeds is not None:
        return args.seeds
    return [args.seed if args.seed is not None else 0]


def parse_checkpoints(specs: list[str], backbones: list[str]) -> dict[str, str]:
    """``["uvit=path.pt", "ddpm=google/ddpm-cifar10-32", ...]`` -> ``{"uvit": "path.pt", "ddpm": "<its snapshot>"}``,
    checking names and that each path exists or each Hub id is in (or downloads into) the Hugging Face cache.

    Whether the file (or diffusers directory) fits the backbone is checked when the run loads it.
    """
    from benchmark.checkpoints import resolve_checkpoint

    checkpoints: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise BenchmarkError(f"malformed --checkpoint {spec!r}: write it as BACKBONE=PATH")
        if name not in backbones:
            raise BenchmarkError(f"--checkpoint for unknown backbone {name!r}; available: {', '.join(backbones)}")
        try:
            checkpoints[name] = str(resolve_checkpoint(path))
        except BenchmarkError as e:
            raise BenchmarkError(f"--checkpoint {name}: {e}") from None
    return checkpoints


def leaderboard_command(args: argparse.Namespace) -> int:
    from benchmark.grid.report import publish

    paths = publish(args.run_dir)
    print(paths[args.format].read_text(encoding="utf-8"), end="")
    return 0


def train_dense_command(args: argparse.Namespace) -> int:
    from benchmark import checkpoints
    from benchmark.data import cache_dir
    from benchmark.grid.run import resolve_device
    from benchmark.plugins import build_registries

    backbone = build_registries().backbones.get(args.backbone)
    preset = get_preset(args.preset)
    device = resolve_device(args.device) if args.device else None
    out = args.out or cache_dir() / "dense" / checkpoints.checkpoint_filename(backbone, preset)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchmarkError(f"cannot write the checkpoint to {out}: {e.strerror or e}") from None
    steps = args.steps or preset.dense_train_steps
    path = checkpoints.train_dense(
        backbone, preset, steps, args.seed, out, not args.quiet, device=device, resume=args.resume
    )
    print(path)
    return 0


def train_classifier_command(args: argparse.Namespace) -> int:
    from benchmark.data import load_dataset, load_labels
    from benchmark.metrics import adherence

    out = args.out or adherence.WEIGHTS_DIR / adherence.CLASSIFIERS["mnist16"]
    model, accuracy = adherence.train_classifier(load_dataset("mnist16"), load_labels("mnist16"), args.steps, args.seed)
    adherence.write_classifier(model, accuracy, args.steps, out)
    print(f"{out}: held-out accuracy {accuracy:.4f} on {adherence.HELD_OUT} digits")
    return 0


def prune_command(args: argparse.Namespace) -> int:
    from benchmark.plugins import build_registries
    from benchmark.prune_command import prune

    registries = build_registries()
    preset = get_preset(args.preset)
    if args.batch_size:
        preset = dataclasses.replace(preset, batch_size=args.batch_size)
    return prune(registries, args.method, args.backbone, preset, method_options(args), args.checkpoint, args.seed,
                 args.device, args.out, as_json=args.json, progress=not args.quiet)


def compare_command(args: argparse.Namespace) -> int:
    from benchmark import compare

    cells = compare.ok_cells(args.run_dir)
    if args.claims:
        if args.rows:
            raise BenchmarkError("give two rows or --claims, not both")
        print(compare.pairs_table(cells, compare.CLAIMS, ["fid", "fid_to_dense"]))
        print(compare.equal_latency(cells))
        return 0
    if len(args.rows) != 2:
        raise BenchmarkError(f"compare needs two rows or --claims, got {len(args.rows)} row(s)")
    missing = [m for m in args.rows if m not in set(cells["method"])]
    if missing:
        raise BenchmarkError(f"no ok row {missing[0]!r} in {args.run_dir}; rows: {', '.join(sorted(set(cells['method'])))}")
    print(compare.pairs_table(cells, [("", *args.rows)], [args.metric]))
    return 0


def check_dense_command(args: argparse.Namespace) -> int:
    from benchmark import checkpoints, convergence
    from benchmark.data import load_dataset
    from benchmark.metrics import fid
    from benchmark.plugins import build_registries

    start = time.perf_counter()
    registries = build_registries()
    preset = get_preset(args.preset)
    backbones = registries.backbones.select(args.backbones)
    options = RunOptions(checkpoints=parse_checkpoints(args.checkpoint, registries.backbones.names()))
    n = args.samples or preset.fid_samples
    scorer = fid.FIDScorer("cpu", progress=False)
    images = load_dataset(preset.dataset)
    real = fid.reference_features(preset.dataset, n, lambda: images, scorer)
    floor = fid.bootstrap_fid(scorer.features(fid.reference_images(preset.dataset, n, lambda: images, offset=n)), real,
                              seed=args.seed)
    rows = []
    for name in backbones:
        backbone = registries.backbones.get(name)
        path = checkpoints.dense_checkpoint(backbone, preset, options, "cpu", progress=False)
        rows.append(convergence.check(backbone, preset, path, sorted(args.steps), real, floor, scorer, args.seed,
                                      args.grids))
    print(convergence.render(rows, floor, n, args.seed, time.perf_counter() - start))
    return 0


def rerun_diff_command(args: argparse.Namespace) -> int:
    from benchmark import compare

    print(compare.rerun_diff(args.first, args.second, any_config=args.any_config))
    return 0


def cost_command(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from benchmark.grid import cost
    from benchmark.grid.report import read_cells

    print(cost.render(cost.summarize(read_cells(args.run_dir), timedelta(minutes=args.gap))))
    return 0


def dipgo_convergence_command(args: argparse.Namespace) -> int:
    from benchmark import dipgo_convergence
    from benchmark.plugins import build_registries

    if args.steps % args.every:
        raise BenchmarkError(f"--steps {args.steps} must be a multiple of --every {args.every}")
    registries = build_registries()
    for name in registries.backbones.select(args.backbones):
        backbone = registries.backbones.get(name)
        result = dipgo_convergence.measure(backbone, get_preset(args.preset), args.steps, args.every, args.seed)
        print(dipgo_convergence.render(result), end="\n\n", flush=True)
    return 0


def latency_command(args: argparse.Namespace) -> int:
    from benchmark.grid.run import resolve_device
    from benchmark.metrics import latency
    from benchmark.plugins import build_registries

    backbone = build_registries().backbones.get(args.backbone)
    latency.latency_command(
        backbone, get_preset(args.preset), args.batch_sizes, resolve_device(args.device), args.out,
        variant=args.variant,
    )
    return 0
