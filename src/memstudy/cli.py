"""The ``memstudy`` command line: run grids, rebuild reports, run one cell.

``memstudy grid run quick``, ``memstudy grid list``, ``memstudy report`` and
``memstudy cell --param dataset_size=64``; every command explains itself with ``--help``.
A bad spec or parameter prints one line saying what to fix and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, RunConfig

MAIN_EPILOG = """\
examples:
  memstudy grid list                  the packaged grids and their sizes (instant)
  memstudy grid run smoke             3 CPU cells of a few seconds each
  memstudy report                     tables of every grid run so far (seconds)
  memstudy publish results/reference  the grid's small files into reference/ (seconds)
  memstudy cell                       one smoke cell, no notebook (seconds)
  memstudy bench --smoke              the speed benchmark at toy sizes (about 1 min)
  memstudy course build               the course's student notebooks and solutions (seconds)
see `memstudy COMMAND --help` for each command's options and cost.
"""

GRID_EPILOG = """\
examples:
  memstudy grid list                  packaged specs with design and cell count (instant)
  memstudy grid run smoke --dry-run   the cells of a grid, without running them (instant)
  memstudy grid run smoke             run it: 3 CPU cells of a few seconds each
cost: a grid costs its cell count times one cell; see `memstudy grid run --help`.
"""

GRID_RUN_EPILOG = """\
examples:
  memstudy grid run smoke --dry-run
      list the 3 cells of the test grid and their configs; writes nothing
  memstudy grid run smoke
      3 CPU cells of a few seconds each, one after another, into results/smoke/
  memstudy grid run quick --jobs 2
      the CPU preset, 2 cells at a time (--executor local) with the cores split between them
  memstudy grid run quick --only aug-strong_size-M_n-16_seed-0
      one cell of the grid (ids: see --dry-run)
  memstudy grid run full --executor slurm --slurm-partition gpu --slurm-time 12:00:00
      the 108-cell GPU preset as one Slurm job array (one GPU per cell); run it from a
      login node inside tmux or screen, it waits for the jobs. Resources per cell:
      --slurm-gpus/--slurm-cpus/--slurm-mem-gb; --jobs caps the tasks running at once.

cost: `memstudy grid list` gives each preset's cell count; one cell of the smoke grid takes
seconds on a CPU, the quick and full budgets are placeholders (time one cell first with
`memstudy cell`). Stopping is safe: Ctrl-C or SIGTERM stops every cell's worker and kernel
within seconds; run the same command again and complete cells are skipped, a started cell
resumes from its last checkpoint, failed cells are retried. A running cell's folder is locked
(run.lock), so a second runner on the same results leaves it alone and takes other cells.
Results: <results>/<spec name>/<cell id>/ with notebook.ipynb, metrics.json, figures/, and
error.json for a cell that failed.
"""

REPORT_EPILOG = """\
examples:
  memstudy report                     every grid under $MEMSTUDY_RESULTS (default ./results)
  memstudy report results/quick       one grid

writes report.parquet and report.csv into each grid folder (one row per cell, checkpoint
step and detector) and prints a summary. cost: seconds.

rebuild check (--check):
  memstudy report --check reference/reference
      reruns the cheapest complete cell (smallest profile_s total; a generative one if
      any: controls train no model) from its committed
      config.json into a temporary folder, prints committed | fresh | difference of mem_rate,
      copy_rate, excess_copy_rate, mia_auc and tau per checkpoint and detector, writes
      <cell>.check.json beside the rerun; exit 0 within tolerance, 1 outside it.
  memstudy report --check reference/reference --cell CELL_ID --atol 0.05
tolerance: rates, AUCs, TPRs, tau and the fp floor within --atol (default 0.02); counts
within atol x the row's set size; set sizes exactly; FD/MMD/MS-SSIM shown, not judged. Same
seed, torch and thread count on a CPU repeat the numbers; another CPU, BLAS or thread count
changes float summation order, which training amplifies into different samples. A rate over
N samples moves in steps of 1/N: 0.02 allows one flip in 64, none in 16.
cost: one cell (the reference preset's cheapest: minutes on one core). The shared stage-1
autoencoder is a cache ($MEMSTUDY_CACHE, default <results>/_cache): a fresh clone trains it
first (ae_steps; the output says how long it took).
"""

PUBLISH_EPILOG = """\
examples:
  memstudy publish results/reference --to reference --validation results/validation_64px
      copies the allow-listed small files of the grid and the benchmark into reference/
  memstudy publish results/quick --to /tmp/pub --allow-incomplete
  memstudy publish --validation results/validation_32px_t1
      a benchmark alone, beside the grids already in reference/ (they stay as they were)

publishes: grid.json, report.parquet/.csv (rebuilt from the copied cells), provenance.json;
per complete cell config/metrics/env.json, stats.jsonl, eval/*.json and eval/*.npz, and only
the figures of each grid point's first complete replicate (what the pages show); from each
validation folder *.csv, *.parquet, benchmark.json, *.png. Never checkpoints, *.pt, samples/,
notebooks, split.json, data.json. Refuses grids with unfinished cells (unless
--allow-incomplete) and any grid on real data: a published book must never hold patient
pixels, patient ids or per-patient scores. Atomic: a failed publish leaves the old folder.
Other folders already in --to are kept. cost: seconds.
"""

CELL_EPILOG = """\
examples:
  memstudy cell
      the RunConfig defaults: a CPU smoke run of a few seconds
  memstudy cell --param dataset_size=64 --param augmentation=flip_rotate --run-dir /tmp/n64
  memstudy cell --param train_steps=2000 --param checkpoints=500,1000,2000 --param device=cuda

runs memstudy.run_cell directly (no notebook); rerunning on the same --run-dir resumes.
cost: the defaults take seconds on a CPU; training time grows with train_steps, the UNet
preset and image_size. Parameters: any RunConfig field (tuples as comma lists).
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``memstudy`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["validate"]:  # the benchmark owns its arguments (and its --help)
        from .validation.planted import main as validate

        return validate(argv[1:])
    if argv[:1] == ["bench"]:  # the speed benchmark also owns its arguments
        from .pipeline.bench import main as bench

        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:  # a bad spec or parameter: one line, no traceback
        print(f"memstudy: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memstudy", description="How much do generative models of medical images memorize "
        "their training patients? Run the ablation grid and build its report.",
        epilog=MAIN_EPILOG, formatter_class=_Raw)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    grid = commands.add_parser("grid", help="run or list ablation grids", epilog=GRID_EPILOG,
                               formatter_class=_Raw,
                               description="Run or list ablation grids (YAML specs).")
    grid_commands = grid.add_subparsers(required=True, metavar="ACTION")
    _add_grid_run(grid_commands)
    listing = grid_commands.add_parser(
        "list", help="packaged grid specs with their cell counts",
        description="List the packaged grid specs: name, design, cell count, description.",
        epilog="example:\n  memstudy grid list\n\ncost: instant.", formatter_class=_Raw)
    listing.set_defaults(func=_grid_list)

    report = commands.add_parser(
        "report", help="rebuild report.parquet/.csv from run folders", epilog=REPORT_EPILOG,
        formatter_class=_Raw, description="Collect every cell folder of one or more grids into "
        "one table, from config.json and metrics.json only.")
    report.add_argument("grids", nargs="*", type=Path, metavar="RESULTS_DIR/PRESET",
                        help="grid folders (default: every grid under the results root)")
    report.add_argument("--check", action="store_true",
                        help="rebuild check: rerun one cell of the (one) grid folder and compare "
                        "its metrics with the committed ones (see below); exit 1 outside tolerance")
    report.add_argument("--cell", metavar="CELL_ID",
                        help="with --check: the cell to rerun (default: the cheapest complete one)")
    report.add_argument("--atol", type=float, default=0.02,
                        help="with --check: absolute tolerance of rates, AUCs and tau (default "
                        "0.02: one sample in 64; see below)")
    report.add_argument("--work-dir", type=Path, metavar="DIR",
                        help="with --check: where the rerun goes (default: a new temporary folder)")
    report.set_defaults(func=_report)

    publish = commands.add_parser(
        "publish", help="copy a grid's small result files into a committed results root",
        epilog=PUBLISH_EPILOG, formatter_class=_Raw,
        description="Publish a grid (and detector benchmarks) as small files the repository "
        "holds and the book builds from, with provenance.json and a README.")
    publish.add_argument("grid", type=Path, metavar="GRID_DIR", nargs="?", default=None,
                         help="e.g. results/reference; leave it out to publish --validation "
                         "folders alone, beside what the root already holds")
    publish.add_argument("--to", type=Path, default=Path("reference"), metavar="DIR",
                         help="the published results root (default: reference)")
    publish.add_argument("--validation", nargs="+", type=Path, default=[], metavar="DIR",
                         help="`memstudy validate` results folders to publish beside the grid")
    publish.add_argument("--allow-incomplete", action="store_true",
                         help="publish the complete cells of a grid that has unfinished ones")
    publish.add_argument("--grid-command", metavar="TEXT",
                         help="the command that ran the grid, for provenance.json (default: "
                         "`memstudy grid run <preset>`, marked as reconstructed)")
    publish.set_defaults(func=_publish)

    cell = commands.add_parser(
        "cell", help="run one cell directly (no notebook)", epilog=CELL_EPILOG,
        formatter_class=_Raw, description="Run one cell of the study with the given RunConfig "
        "parameters and print its metrics.")
    cell.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="a RunConfig field, e.g. dataset_size=64 (repeatable)")
    cell.add_argument("--run-dir", type=Path,
                      help="run folder (default: $MEMSTUDY_RESULTS/cells/<config digest>)")
    cell.add_argument("--no-progress", action="store_true", help="no progress bars")
    cell.set_defaults(func=_cell)

    release = commands.add_parser(
        "filter", help="drop flagged copies from a run's synthetic set before sharing it",
        formatter_class=_Raw, description="Release filter: drop every synthetic sample that a "
        "detector flags (similarity to the nearest training slice above its tau) and write the "
        "rest, with a report of what was dropped and what the other detectors still flag.",
        epilog="example:\n  memstudy filter results/quick/aug-none_size-S_n-8_model-ldm_seed-0 "
        "--detector pixel\n      writes <run>/release/released.npz, release_report.json and "
        "release_hist.png\n\ncost: a second; reads the run folder, trains nothing.")
    release.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a complete run folder")
    release.add_argument("--step", type=int, default=None, help="checkpoint (default: the last)")
    release.add_argument("--detector", default="contrastive", help="detector whose flags are dropped")
    release.add_argument("--out-dir", type=Path, default=None, help="default: RUN_DIR/release")
    release.set_defaults(func=_filter)

    from .course.build import add_parser as add_course  # the teaching module: `memstudy course`

    add_course(commands)

    commands.add_parser(
        "validate", help="validate the copy detectors against planted copies (known truth)",
        add_help=False, description="Runs `memstudy validate`; see its --help.")
    # Never reached: main() hands `validate ...` to memstudy.validation.planted before parsing; the
    # parser entry is here so that `memstudy --help` lists it.
    commands.add_parser(
        "bench", help="measure steps, sampling, neighbours, one cell; project preset wall times",
        add_help=False, description="Runs `memstudy bench`; see its --help.")  # as validate
    return parser


class _Raw(argparse.RawDescriptionHelpFormatter):
    """Keep the examples in the epilogs laid out as written."""


def _add_grid_run(grid_commands) -> None:
    from .pipeline.executors import EXECUTORS, SlurmOptions

    run = grid_commands.add_parser(
        "run", help="run every cell of a grid that is not complete", epilog=GRID_RUN_EPILOG,
        formatter_class=_Raw, description="Run each cell of a grid spec through "
        "notebooks/ablation.ipynb (papermill) into <results>/<spec name>/<cell id>/.")
    run.add_argument("spec", help="packaged spec name (see `memstudy grid list`) or path to a .yaml")
    run.add_argument("--dry-run", action="store_true",
                     help="print every cell id and its config, write nothing")
    run.add_argument("--executor", choices=EXECUTORS,
                     help="where cells run (default: sequential, in this process; local when "
                     "--jobs is above 1)")
    run.add_argument("--jobs", type=int, metavar="N",
                     help="cells at once (default: 1; local: one per GPU; slurm: all)")
    run.add_argument("--results", type=Path, metavar="DIR",
                     help="results root (default: $MEMSTUDY_RESULTS or ./results)")
    run.add_argument("--only", nargs="+", metavar="CELL_ID", help="run only these cells")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="give every cell this RunConfig value (e.g. --set dataset=brats2021); "
                     "results then go to <spec name>-<values>/, apart from the spec's own")
    run.add_argument("--no-retry-failed", action="store_true",
                     help="leave cells that failed before (error.json) alone")
    run.add_argument("--no-progress", action="store_true",
                     help="no live view (which cells run, their stage and step, ETA): one plain "
                     "line per cell started or ended, and a status line a minute, for logs")
    default = SlurmOptions()
    slurm = run.add_argument_group("slurm", "resources of each array task (one cell); "
                                   "--slurm-time also bounds submitit-local jobs")
    slurm.add_argument("--slurm-partition", metavar="NAME", help="partition (default: the cluster's)")
    slurm.add_argument("--slurm-account", metavar="NAME", help="account to charge (default: yours)")
    slurm.add_argument("--slurm-time", type=_minutes, default=default.time_min, metavar="TIME",
                       help=f"time limit per cell, minutes or H:MM:SS (default {default.time_min}); "
                       "a cell that runs out is requeued and resumes")
    slurm.add_argument("--slurm-cpus", type=int, default=default.cpus_per_task, metavar="N",
                       help=f"CPU cores per cell (default {default.cpus_per_task})")
    slurm.add_argument("--slurm-mem-gb", type=int, default=default.mem_gb, metavar="GB",
                       help=f"memory per cell (default {default.mem_gb})")
    slurm.add_argument("--slurm-gpus", type=int, default=default.gpus_per_node, metavar="N",
                       help=f"GPUs per cell (default {default.gpus_per_node})")
    run.set_defaults(func=_grid_run)


def _minutes(text: str) -> int:
    """'90' -> 90; '1:30:00' -> 90 (Slurm's H:MM:SS)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not minutes or H:MM:SS") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + (parts[2] > 0)  # seconds round up to a minute
    raise argparse.ArgumentTypeError(f"{text!r} is not minutes or H:MM:SS")


def _with_set(spec_name: str, items: list[str]):
    """The spec with ``--set KEY=VALUE`` values fixed for every cell, under a name of its own."""
    if not items:
        return spec_name
    from .pipeline.grid import GridSpec, load_spec

    spec = load_spec(spec_name)
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (_, sep, _) in zip(items, pairs) if not sep]
    if bad:
        raise ConfigError(f"--set {bad[0]!r} is not KEY=VALUE, e.g. --set dataset=brats2021.")
    fixed = {**spec.fixed, **{k.strip(): v.strip() for k, _, v in pairs}}
    tag = "-".join(v.strip().replace(":", "_") for _, _, v in pairs)
    return GridSpec.from_dict({**spec.to_dict(), "name": f"{spec.name}-{tag}", "fixed": fixed},
                              source=f"{spec.source} with --set {' '.join(items)}")


def _check_data(spec) -> None:
    """Index each real data set of a grid once (no pixels), printing what was found."""
    from .data.sets import check_data
    from .pipeline.grid import load_spec

    cells = (load_spec(spec) if isinstance(spec, (str, Path)) else spec).cells()
    for dataset in sorted({c.config.dataset for c in cells} - {"cohort"}):
        print(check_data(next(c.config for c in cells if c.config.dataset == dataset)))


def _grid_run(args: argparse.Namespace) -> int:
    from .pipeline.executors import SlurmOptions
    from .pipeline.runner import GridInterrupted, run_grid

    slurm = SlurmOptions(partition=args.slurm_partition, account=args.slurm_account,
                         time_min=args.slurm_time, cpus_per_task=args.slurm_cpus,
                         mem_gb=args.slurm_mem_gb, gpus_per_node=args.slurm_gpus)
    executor = args.executor or ("local" if (args.jobs or 1) > 1 else "sequential")
    spec = _with_set(args.spec, args.set)
    if not args.dry_run:
        _check_data(spec)  # bad data: one message now, not one failed cell each
    try:
        summary = run_grid(spec, results_dir=args.results, executor=executor,
                           jobs=args.jobs, dry_run=args.dry_run,
                           retry_failed=not args.no_retry_failed, only=args.only, slurm=slurm,
                           progress=not args.no_progress)
    except GridInterrupted as stop:  # every worker is stopped by now
        print(f"memstudy: stopped by {stop}.", file=sys.stderr)
        if stop.summary is not None:
            print(stop.summary.format())
        return 128 + stop.signum  # the shell's convention for "ended by signal N"
    if not args.dry_run:
        print(summary.format())
    return 0 if summary.ok else 1


def _grid_list(args: argparse.Namespace) -> int:
    from .pipeline.grid import load_spec, packaged_specs

    for name in packaged_specs():
        try:
            spec = load_spec(name)
            print(f"{name:8s} {spec.design:5s} {len(spec.cells()):4d} cells  {spec.description}")
        except ConfigError as err:
            print(f"{name:8s} invalid: {err}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .analysis.report import load_plan, summary_text, write_report
    from .runio import results_root

    if args.check:
        return _report_check(args)
    if args.cell or args.work_dir:
        raise ConfigError("--cell and --work-dir go with --check, e.g. "
                          "`memstudy report --check reference/reference --cell CELL_ID`.")

    grids = args.grids or sorted(p.parent for p in results_root().glob("*/grid.json"))
    if not grids:
        raise ConfigError(f"no grid results under {results_root()}: run `memstudy grid run "
                          "smoke` first, or name the grid folders.")
    for folder in grids:
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder; give results/<preset> folders.")
        df = write_report(folder)
        print(f"{folder}: report.parquet, report.csv ({len(df)} rows)")
        print(summary_text(df, load_plan(folder)))
    return 0


def _report_check(args: argparse.Namespace) -> int:
    from .analysis.rebuild import check_cell

    if len(args.grids) != 1 or not args.grids[0].is_dir():
        raise ConfigError("--check takes one grid folder, e.g. `memstudy report --check "
                          "reference/reference`.")
    result = check_cell(args.grids[0], cell=args.cell, atol=args.atol, work_dir=args.work_dir)
    print(result.format())
    return 0 if result.ok else 1


def _publish(args: argparse.Namespace) -> int:
    from .analysis.publish import SIZE_LIMIT_MB, publish

    command = " ".join(["memstudy", "publish", *sys.argv[2:]]) if sys.argv[1:2] == ["publish"] else None
    done = publish(args.grid, to=args.to, validation=tuple(args.validation),
                   allow_incomplete=args.allow_incomplete, grid_command=args.grid_command,
                   command=command)
    print(done.format())
    if done.size_bytes > SIZE_LIMIT_MB * 1e6:
        print(f"memstudy: warning: {done.root} is over {SIZE_LIMIT_MB:.0f} MB; "
              "tests/test_publish.py will fail on it.", file=sys.stderr)
    return 0


def _cell(args: argparse.Namespace) -> int:
    from .pipeline.cell import default_run_dir, run_cell
    from .analysis.report import cell_table

    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r} is not KEY=VALUE, e.g. --param dataset_size=64.")
        params[key.strip()] = value.strip()
    cfg = RunConfig.from_params(params)
    run_dir = args.run_dir or default_run_dir(cfg)
    print(f"run folder: {run_dir}")
    run_cell(cfg, run_dir, progress=not args.no_progress)
    print(cell_table(run_dir).to_string(index=False))
    return 0


def _filter(args: argparse.Namespace) -> int:
    import json

    from .analysis.release import filter_release

    if not (args.run_dir / "metrics.json").exists():
        raise ConfigError(f"{args.run_dir} is not a complete run folder (no metrics.json): "
                          "run the cell first.")
    report = filter_release(args.run_dir, step=args.step, detector=args.detector,
                            out_dir=args.out_dir)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
