"""`raybench` command line: parses, calls sweep/tracking/detector, prints. Nothing else.

Exit status: 0 all done; 1 `predict` skipped unreadable files; 2 bad input (arguments, data,
config, search space, tracking, storage: nothing ran); 3 a sweep ended with FAILED trials;
4 `predict` found no model for the category; 130 interrupted (Ctrl-C; `--resume` finishes a sweep);
143 the same on SIGTERM. `raybench serve` drains and exits 0 on either."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from raybench.cli_parser import build_parser



EXIT_OK, EXIT_UNREADABLE, EXIT_USAGE, EXIT_TRIALS_FAILED, EXIT_NO_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_TERMINATED = 143  # SIGTERM: stopped as Ctrl-C stops; 128 + 15, as a shell reports it


def cmd_sweep(args) -> int:
    from raybench.delivery.registry import register
    from raybench.methods import get_method, method_names
    from raybench.sweep.driver import run_sweep
    from raybench.evaluation.splits import DEFAULT_VAL_MODE
    from raybench.sweep.plan import (DEFAULT_METHOD, DEFAULT_TRIALS, new_sweep_id, overrides_per_method, parse_set,
                                     preset_default, real_anomaly_need)
    from raybench.sweep.search_space import load_search_space
    from raybench.tracking import format_leaderboard
    trials = args.trials or preset_default(args.dataset, "trials", DEFAULT_TRIALS)
    args.method = args.method or preset_default(args.dataset, "method", DEFAULT_METHOD)
    args.val_mode = args.val_mode or preset_default(args.dataset, "val_mode", DEFAULT_VAL_MODE)
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
    if args.few_shot_pool is None:  # one pool for every method: all are scored on identical images
        args.few_shot_pool = max(real_anomaly_need(_spec(args, m, trials, overrides[m]),
                                                   load_search_space(m, args.search_space)) for m in methods)
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
        split_seed=args.split_seed, final_seeds=args.final_seeds, val_normals=args.val_normals,
        few_shot_pool=args.few_shot_pool, accept_weak_validation=args.accept_weak_validation, select=args.select)


def cmd_leaderboard(args) -> int:
    from raybench.tracking import format_leaderboard, leaderboard, require_existing_store
    from raybench.tracking.export import to_csv, to_json
    rows = leaderboard(require_existing_store(args.tracking_uri), args.dataset,
                       sweep_id=args.sweep_id, all_sweeps=args.all_sweeps)
    if args.format == "table":
        print(format_leaderboard(rows, wide=args.wide))
    else:
        print({"json": to_json, "csv": to_csv}[args.format](rows), end="" if args.format == "csv" else "\n")
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
        print(f"{unreadable} file(s) could not be read or scored (listed above); {scored} scored", file=sys.stderr)
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
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: take no new requests, finish those taken, stop
        from raybench.local_ray import terminated
        print(f"raybench serve: {'SIGTERM' if terminated() else 'interrupted'}: draining and stopping", flush=True)
        serve.shutdown()
        print("raybench serve: stopped", flush=True)
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
    from raybench.local_ray import sigterm_as_interrupt, terminated
    sigterm_as_interrupt()  # systemd, `timeout`, Kubernetes, docker stop: stop as Ctrl-C stops
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
        print(f"raybench: {err}{' (SIGTERM)' if terminated() else ''}", file=sys.stderr)
        return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the trials
        hint = " (`--resume` with the same arguments finishes the sweep)" if args.command == "sweep" else ""
        print(f"raybench: {'terminated (SIGTERM)' if terminated() else 'interrupted'}{hint}", file=sys.stderr)
        return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
    except (RaybenchError, ValueError, LookupError) as err:  # LookupError: no such run (KeyError is one)
        print(f"raybench: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
