"""`raybench` command line: parses, calls sweep/tracking/detector, prints. Nothing else.

Exit status: 0 all done; 1 `predict` skipped unreadable files; 2 bad input (arguments, data,
config, search space, tracking, storage: nothing ran); 3 a sweep ended with FAILED trials;
4 `predict` found no model for the category; 130 interrupted (Ctrl-C; `--resume` finishes a sweep)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path



EXIT_OK, EXIT_UNREADABLE, EXIT_USAGE, EXIT_TRIALS_FAILED, EXIT_NO_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


DESCRIPTION = """Tune industrial anomaly-detection methods per product category (Ray Tune + Optuna), track
every trial in MLflow, register and serve the winners, write an HTML report.

  raybench sweep demo          the built-in demo: two methods, three categories, about 5 minutes
  raybench ui                  the MLflow UI for the store a sweep used
  raybench report demo         one offline HTML page of the results"""


def _dataset(text: str) -> str:
    from raybench.data import DATASETS
    from raybench.errors import unknown_name
    if text not in DATASETS:
        raise argparse.ArgumentTypeError(unknown_name("dataset", text, DATASETS))
    return text


def _add_verbose(p):
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="also show the libraries' own log lines and warnings (MLflow, Ray, Optuna)")


def _add_common(p):
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    from raybench.console import HelpFormatter
    from raybench.data import DATASETS
    from raybench import __version__
    parser = argparse.ArgumentParser(prog="raybench", description=DESCRIPTION, formatter_class=HelpFormatter,
                                     epilog="`raybench COMMAND -h` explains a command's flags.")
    parser.add_argument("--version", action="version", version=f"raybench {__version__}")
    _add_verbose(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name, **kw):
        p = _add_parser(name, formatter_class=HelpFormatter, description=kw.get("help"), **kw)
        _add_verbose(p)
        return p
    sub.add_parser = add_parser

    p = sub.add_parser("sweep", help="tune a method per category and track every trial in MLflow")
    p.add_argument("dataset", type=_dataset, help=f"dataset layout: {', '.join(DATASETS)} (demo is built in)")
    p.add_argument("--data-root", default=None, help="dataset folder (not needed for demo)")
    p.add_argument("--categories", default="all", help="comma list or 'all' (default: all)")
    p.add_argument("--method", default=None,
                   help="a method, a comma list, or 'all' (see `raybench methods`; default: patchcore, "
                        "demo: patchcore,cutpaste)")
    p.add_argument("--trials", type=_positive_int, default=None, help="trials per category (demo: 4, else 8)")
    p.add_argument("--search-space", default=None, help="YAML file (default search_spaces/<method>.yaml)")
    _add_common(p)
    p.add_argument("--experiment", default=None, help="MLflow experiment (default raybench-<dataset>)")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' on a cluster; default local)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs Ray reserves per trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="fractions pack several trials on one GPU (default: 1 if the Ray cluster has GPUs, else 0)")
    p.add_argument("--workers", type=_positive_int, default=1, help="Ray Train DDP workers per trial")
    p.add_argument("--seed", type=int, default=0, help="seeds the methods and each category's Optuna sampler (default: 0)")
    p.add_argument("--weights", default=None, help="imagenet | random | PATH (default: the method's, imagenet; demo: imagenet tf_efficientnet_lite0 "
                        "from the installed package)")
    p.add_argument("--budget", default="default", choices=("smoke", "default", "paper"),
                   help="epochs and sizes: smoke (seconds), default, paper (the papers' settings)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="fix a config field for every trial (repeatable)")
    p.add_argument("--storage", default=None, help="Ray Tune storage (default ./.raybench/ray_results; $RAYBENCH_STORAGE)")
    p.add_argument("--sweep-id", default=None, help="name this sweep (default: time + random suffix); with --resume, which one")
    p.add_argument("--resume", action="store_true", help="finish the latest (or --sweep-id) sweep")
    p.add_argument("--asha", action="store_true", help="ASHA early stopping (trained methods; epochs as resource)")
    p.add_argument("--max-concurrent", type=_positive_int, default=None, help="at most this many trials at once (default: as resources allow)")
    p.add_argument("--kind", dest="kinds", action="append", metavar="CATEGORY=object|texture",
                   help="what a category is (default: MVTec AD's texture names are textures, the rest objects); "
                        "synthesis keeps to an object's foreground (repeatable)")
    p.add_argument("--no-register", action="store_true",
                   help="skip registering each category's best run (raybench-<dataset>-<category>@champion)")
    p.add_argument("--no-figures", dest="figures", action="store_false",
                   help="skip each trial's overlay grid, ROC/PR curves and score histogram (MLflow artifacts)")
    p.add_argument("--val-split", type=float, default=0.3,
                   help="validation share: of the test images per defect type and of the good ones (real), "
                        "or of the training normals (synthetic); default 0.3")
    p.add_argument("--val-mode", default="real", choices=("real", "synthetic"),
                   help="validation from real test images (default) or held-out normals + synthetic anomalies")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation/test split (default: 0)")
    p.add_argument("--final-seeds", type=int, default=None,
                   help="retrain each category's chosen config with N new seeds; test mean +- std (demo: 2, else 0)")

    p = sub.add_parser("leaderboard", help="per category x method: chosen on validation, test beside it")
    p.add_argument("dataset", nargs="?", default=None, help="only this dataset's experiment (default: every raybench-* experiment)")
    p.add_argument("--all-sweeps", action="store_true", help="every sweep (default: the latest one)")
    p.add_argument("--sweep-id", default=None, help="this sweep (default: the latest one)")
    p.add_argument("--wide", action="store_true", help="every column: run name, budget, weights, sizes, test count "
                                                       "(default: 100 columns)")
    _add_common(p)

    p = sub.add_parser("predict", help="score images with the best model of a category")
    p.add_argument("images", nargs="+", help="image files or folders of them")
    p.add_argument("--dataset", default=None, help="take the best run of this dataset only (default: any)")
    p.add_argument("--category", required=True, help="the product category whose best model scores the images")
    p.add_argument("--method", default=None, help="take the best run of this method only (default: any)")
    p.add_argument("--out", default=None,
                   help="folder for anomaly maps at each image's size (.npy, .png), defect masks (_mask.png) "
                        "and colour overlays (_overlay.png: heat map, predicted outline, score and verdict)")
    _add_common(p)

    p = sub.add_parser("report", help="one self-contained HTML page: leaderboard, charts, the best runs' overlays")
    p.add_argument("dataset", help="the dataset whose experiment (raybench-DATASET) to report")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    p.add_argument("--data-root", default=None, help="the dataset's folder, to draw the chosen runs' TEST pictures "
                                                     "(default: none needed for demo)")
    _add_common(p)

    p = sub.add_parser("methods", help="list methods; with METHOD, its config fields: type, default, range, tuned?")
    p.add_argument("method", nargs="?", default=None, help="one method's fields (default: every method, one line each)")

    p = sub.add_parser("ui", help="serve the MLflow UI for a sweep's store on loopback and print its URL")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
    _add_common(p)

    p = sub.add_parser("register", help="register each category's best run in the MLflow Model Registry (alias champion)")
    p.add_argument("dataset", help="the dataset whose runs to register (experiment raybench-DATASET)")
    p.add_argument("--categories", default=None, help="comma list (default: every category with finished runs)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default raybench-<dataset>)")
    _add_common(p)

    p = sub.add_parser("serve", help="one Ray Serve endpoint for every registered category: POST /<dataset>/<category>")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default loopback; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas of the endpoint")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each replica reserves")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs each replica reserves; fractions share a GPU")
    p.add_argument("--alias", default="champion", help="registered model alias to serve")
    p.add_argument("--max-pixels", type=int, default=None, help="largest image accepted (default 50 megapixels)")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' on a cluster; default local)")
    _add_common(p)

    p = sub.add_parser("export", help="the best model of a category as one ONNX graph, checked against torch")
    p.add_argument("dataset", help="the dataset whose best run to export")
    p.add_argument("category", help="the category whose best run to export")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="the export format")
    p.add_argument("--out", required=True, help="folder for model.onnx and raybench-onnx.json")
    p.add_argument("--method", default=None, help="the best run of this method only (default: any)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    _add_common(p)
    return parser


def cmd_sweep(args) -> int:
    from raybench.delivery.registry import register
    from raybench.methods import get_method, method_names
    from raybench.sweep.driver import run_sweep
    from raybench.sweep.plan import DEFAULT_METHOD, DEFAULT_TRIALS, new_sweep_id, overrides_per_method, parse_set, preset_default
    from raybench.tracking import format_leaderboard
    trials = args.trials or preset_default(args.dataset, "trials", DEFAULT_TRIALS)
    args.method = args.method or preset_default(args.dataset, "method", DEFAULT_METHOD)
    _refuse_empty_names("--categories", args.categories)
    _refuse_empty_names("--method", args.method)
    methods = method_names() if args.method == "all" else [m.strip() for m in args.method.split(",")]
    for name in methods:
        get_method(name)  # an unknown name fails here, with a suggestion
    if args.search_space and len(methods) > 1:
        raise ValueError("--search-space names one method's file: use it with a single --method")
    overrides = overrides_per_method(methods, parse_set(args.overrides))
    if args.final_seeds is None:
        args.final_seeds = preset_default(args.dataset, "final_seeds", 0)
    if not args.sweep_id and not args.resume:  # one sweep id for every method: one leaderboard
        args.sweep_id = new_sweep_id()
    rows, failed, total, started_ms = [], 0, 0, int(time.time() * 1000)
    for method in methods:  # one after the other; each sweep runs its categories concurrently
        rows = run_sweep(_spec(args, method, trials, overrides[method]))
        failed, total = failed + rows.failed, total + rows.total
    print("\nLeaderboard of this sweep (best FINISHED run per category x method, chosen on validation):")
    print(format_leaderboard(rows))
    if not args.no_register:
        print("\nModel Registry:")
        for reg in register(args.dataset, sorted({r.category for r in rows}), args.tracking_uri,
                            experiment=args.experiment):
            print(f"  {reg}")
    _print_where_to_look(args, started_ms, rows)
    if failed:
        print(f"raybench: {failed} of {total} trial(s) FAILED (each run's `error` tag in MLflow says why)",
              file=sys.stderr)
        return EXIT_TRIALS_FAILED
    return EXIT_OK


def _refuse_empty_names(flag: str, text: str | None) -> None:
    if text is not None and not all(name.strip() for name in text.split(",")):
        raise ValueError(f"{flag} {text!r}: an empty name (a stray comma?)")


def _print_where_to_look(args, since_ms: int, rows) -> None:
    """The sweep's last lines: `raybench ui`, the runs this command made, the winners compared,
    `raybench report`, the Optuna storage."""
    from raybench import tracking
    from raybench.sweep.optuna_storage import storage_url
    from raybench.sweep.storage import storage_root
    from raybench.sweep.summary import recent_sweep_ids
    from raybench.tracking.ui import where_to_look
    uri = tracking.tracking_uri(args.tracking_uri)
    name = tracking.experiment_name(args.dataset, args.experiment)
    exp = tracking.client(uri).get_experiment_by_name(name)
    if exp is not None:
        winners = [row.run_id for row in tracking.winners(rows).values()]
        print("\n" + where_to_look(uri, exp.experiment_id, recent_sweep_ids(uri, name, since_ms), winners,
                                   dataset=args.dataset, optuna_storage=storage_url(uri, storage_root(args.storage))))


def _spec(args, method: str, trials: int, overrides: dict):
    from raybench.sweep.plan import SweepSpec, parse_kinds
    return SweepSpec(
        dataset=args.dataset, data_root=args.data_root, categories=args.categories, method=method,
        trials=trials, search_space=args.search_space, tracking_uri=args.tracking_uri,
        experiment=args.experiment, address=args.address, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, workers=args.workers, seed=args.seed, weights=args.weights,
        budget=args.budget, overrides=overrides, storage=args.storage,
        sweep_id=args.sweep_id, resume=args.resume, asha=args.asha, max_concurrent=args.max_concurrent,
        kinds=parse_kinds(args.kinds), figures=args.figures, val_split=args.val_split, val_mode=args.val_mode,
        split_seed=args.split_seed, final_seeds=args.final_seeds)


def cmd_leaderboard(args) -> int:
    from raybench.tracking import format_leaderboard, leaderboard, require_existing_store
    print(format_leaderboard(leaderboard(require_existing_store(args.tracking_uri), args.dataset,
                                         sweep_id=args.sweep_id, all_sweeps=args.all_sweeps), wide=args.wide))
    return 0


def cmd_report(args) -> int:
    from raybench.reporting.report import write_report
    from raybench.tracking import require_existing_store
    path = write_report(require_existing_store(args.tracking_uri), args.dataset, args.out, args.data_root)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; opens offline: file://{path.resolve()})")
    return 0


def cmd_predict(args) -> int:
    from raybench import best_model
    from raybench.data.io import IMAGE_SUFFIXES
    from raybench.delivery.predict import image_paths, predict_files
    from raybench.tracking import require_existing_store
    paths = image_paths(args.images)
    if not paths:  # before loading any model
        raise ValueError(f"no image files in {', '.join(args.images)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        det = best_model(args.category, dataset=args.dataset, method=args.method,
                         tracking_uri=require_existing_store(args.tracking_uri))
    except LookupError as err:
        print(f"raybench: error: {err}", file=sys.stderr)
        return EXIT_NO_MODEL
    print(f"model: {det.method} for {args.category}, MLflow run {det.meta.get('run_name') or ''} "
          f"({det.meta.get('run_id')}); image cut {det.image_threshold}, pixel cut {det.pixel_threshold}",
          file=sys.stderr)
    scored, unreadable = predict_files(det, paths, Path(args.out) if args.out else None)
    if unreadable:
        print(f"{unreadable} file(s) could not be read (listed above); {scored} scored", file=sys.stderr)
    return EXIT_UNREADABLE if unreadable else EXIT_OK


def cmd_methods(args) -> int:
    from raybench.methods import get_method, method_names
    from raybench.sweep.fields import describe_fields
    from raybench.models.weights import weights_choices
    if args.method is None:
        for line in weights_choices():
            print(line)
        for name in method_names():
            print(f"  {name + ':':<14} {get_method(name).description}")
        print("`raybench methods METHOD` lists a method's fields: type, default, range, tuned by its search space")
        return 0
    for line in describe_fields(args.method):
        print(line)
    return 0


def cmd_ui(args) -> int:
    from raybench.tracking import require_existing_store
    from raybench.tracking.ui import serve_ui
    return serve_ui(require_existing_store(args.tracking_uri), args.port, log=lambda m: print(m, flush=True))


def cmd_register(args) -> int:
    from raybench.delivery.registry import register
    _refuse_empty_names("--categories", args.categories)
    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    done = register(args.dataset, categories, args.tracking_uri, experiment=args.experiment)
    for reg in done:
        print(reg)
    if not done:
        raise LookupError(f"no finished run with a checkpoint for dataset {args.dataset!r}"
                          f"{' categories ' + args.categories if args.categories else ''}")
    return 0


def cmd_serve(args) -> int:
    import time

    from raybench.delivery import serve
    from raybench.delivery.champions import champions, warm_up
    from raybench.data.io import MAX_PIXELS
    uri = serve.absolute_uri(args.tracking_uri)
    served = champions(uri, args.alias)
    if not served:
        print(f"raybench: no registered raybench-<dataset>-<category>@{args.alias} in {uri} yet (`raybench register "
              f"DATASET` after a sweep); serving anyway, models load on first use", file=sys.stderr)
    app = serve.build_app(args.tracking_uri, args.alias, args.replicas, args.cpus_per_replica,
                          args.gpus_per_replica, args.max_pixels or MAX_PIXELS)
    handle = serve.start(app, args.host, args.port, args.address)
    print(f"loading {len(served)} champion(s) from {uri} ...", flush=True)
    warm_up(handle, [model_id for model_id, _, _ in served], log=lambda m: print(m, flush=True))
    print(f"serving http://{args.host}:{args.port}/<dataset>/<category> (POST image bytes; ?map=png adds the map); "
          f"Ctrl-C stops", flush=True)
    for model_id, version, method in served:
        print(f"  POST http://{args.host}:{args.port}/{model_id}   {method}, "
              f"raybench-{model_id.replace('/', '-')} version {version} (@{args.alias})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def cmd_export(args) -> int:
    from raybench import best_model
    from raybench.delivery.export import export
    det = best_model(args.category, dataset=args.dataset, method=args.method,
                     tracking_uri=args.tracking_uri, device="cpu")
    path, figures = export(det, args.out, args.format, check=not args.no_check)
    print(f"{path}: {det.method} run {det.meta.get('run_id', '?')[:8]}, input (N, 3, {det.image_size}, "
          f"{det.image_size}) in [0, 1]")
    if figures:
        print(f"onnxruntime vs torch on {figures['images']} images: relative error scores "
              f"{figures['scores']:.2e}, maps {figures['maps']:.2e}")
    return 0


def main(argv=None) -> int:
    from raybench.errors import RaybenchError, SweepInterrupted
    from raybench.console import quiet
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `raybench`: what it does and how to start
        parser.print_help()
        return EXIT_OK
    quiet(getattr(args, "verbose", False))
    handler = {"sweep": cmd_sweep, "leaderboard": cmd_leaderboard, "predict": cmd_predict,
               "methods": cmd_methods, "export": cmd_export, "ui": cmd_ui,
               "register": cmd_register, "serve": cmd_serve, "report": cmd_report}[args.command]
    try:
        return handler(args)
    except SweepInterrupted as err:
        print(f"raybench: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the trials
        hint = " (`--resume` with the same arguments finishes the sweep)" if args.command == "sweep" else ""
        print(f"raybench: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RaybenchError, ValueError, LookupError) as err:  # LookupError: no such run (KeyError is one)
        print(f"raybench: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
