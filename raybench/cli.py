"""`raybench` command line: parses, calls sweep/tracking/detector, prints. Nothing else."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)  # numbers, booleans and [lists] as YAML
    return out


def _add_common(p):
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    from raybench.data import DATASETS
    parser = argparse.ArgumentParser(prog="raybench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="tune a method per category and track every trial in MLflow")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--data-root", default=None, help="dataset folder (not needed for demo)")
    p.add_argument("--categories", default="all", help="comma list or 'all'")
    p.add_argument("--method", default="patchcore", help="a method, a comma list, or 'all' (see `raybench methods`)")
    p.add_argument("--trials", type=int, default=None, help="trials per category (demo: 4, else 8)")
    p.add_argument("--search-space", default=None, help="YAML file (default search_spaces/<method>.yaml)")
    _add_common(p)
    p.add_argument("--experiment", default=None, help="MLflow experiment (default raybench-<dataset>)")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' on a cluster; default local)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="fractions pack several trials on one GPU (default: 1 if the Ray cluster has GPUs, else 0)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train DDP workers per trial")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="imagenet | random | PATH (demo: random)")
    p.add_argument("--budget", default="default", choices=("smoke", "default", "paper"))
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="fix a config field for every trial (repeatable)")
    p.add_argument("--storage", default=None, help="Ray Tune storage (default ./.raybench/ray_results; $RAYBENCH_STORAGE)")
    p.add_argument("--sweep-id", default=None)
    p.add_argument("--resume", action="store_true", help="finish the latest (or --sweep-id) sweep")
    p.add_argument("--asha", action="store_true", help="ASHA early stopping (trained methods; epochs as resource)")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--val-split", type=float, default=0.3,
                   help="validation share: of the test images per defect type and of the good ones (real), "
                        "or of the training normals (synthetic); default 0.3")
    p.add_argument("--val-mode", default="real", choices=("real", "synthetic"),
                   help="validation from real test images (default) or held-out normals + synthetic anomalies")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation/test split")
    p.add_argument("--final-seeds", type=int, default=None,
                   help="retrain each category's chosen config with N new seeds; test mean +- std (demo: 2, else 0)")

    p = sub.add_parser("leaderboard", help="per category x method: chosen on validation, test beside it")
    p.add_argument("dataset", nargs="?", default=None)
    p.add_argument("--all-sweeps", action="store_true", help="every sweep (default: the latest one)")
    p.add_argument("--sweep-id", default=None, help="this sweep (default: the latest one)")
    _add_common(p)

    p = sub.add_parser("predict", help="score images with the best model of a category")
    p.add_argument("images", nargs="+", help="image files or folders of them")
    p.add_argument("--dataset", default=None)
    p.add_argument("--category", required=True)
    p.add_argument("--method", default=None)
    p.add_argument("--out", default=None,
                   help="folder for anomaly maps at each image's size (.npy, .png) and defect masks (_mask.png)")
    _add_common(p)

    p = sub.add_parser("methods", help="list methods and their config fields")
    return parser


def cmd_sweep(args) -> int:
    from raybench.config import field_types
    from raybench.methods import get_method, method_names
    from raybench.sweep import DATASET_PRESETS, run_sweep
    from raybench.tracking import format_leaderboard
    trials = args.trials or DATASET_PRESETS.get(args.dataset, {}).get("trials", 8)
    gpus = args.gpus_per_trial
    methods = method_names() if args.method == "all" else [m.strip() for m in args.method.split(",") if m.strip()]
    if args.search_space and len(methods) > 1:
        raise ValueError("--search-space names one method's file: use it with a single --method")
    overrides = parse_set(args.overrides)
    fields = {m: set(field_types(get_method(m).config_cls)) for m in methods}
    unknown = [k for k in overrides if not any(k in f for f in fields.values())]
    if unknown:
        raise ValueError(f"--set {unknown}: not a parameter of {', '.join(methods)} (see `raybench methods`)")
    if args.final_seeds is None:
        args.final_seeds = DATASET_PRESETS.get(args.dataset, {}).get("final_seeds", 0)
    if not args.sweep_id and not args.resume:  # one sweep id for every method: one leaderboard
        from raybench.sweep import new_sweep_id
        args.sweep_id = new_sweep_id()
    rows = []
    for method in methods:  # one after the other; each sweep runs its categories concurrently
        own = {k: v for k, v in overrides.items() if k in fields[method]}  # e.g. epochs1 is rd's only
        rows = run_sweep(_spec(args, method, trials, gpus, own))
    print("\nLeaderboard of this sweep (best FINISHED run per category x method, chosen on validation):")
    print(format_leaderboard(rows))
    return 0


def _spec(args, method: str, trials: int, gpus: float | None, overrides: dict):
    from raybench.sweep import SweepSpec
    return SweepSpec(
        dataset=args.dataset, data_root=args.data_root, categories=args.categories, method=method,
        trials=trials, search_space=args.search_space, tracking_uri=args.tracking_uri,
        experiment=args.experiment, address=args.address, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=gpus, workers=args.workers, seed=args.seed, weights=args.weights,
        budget=args.budget, overrides=overrides, storage=args.storage,
        sweep_id=args.sweep_id, resume=args.resume, asha=args.asha, max_concurrent=args.max_concurrent,
        val_split=args.val_split, val_mode=args.val_mode, split_seed=args.split_seed, final_seeds=args.final_seeds)


def cmd_leaderboard(args) -> int:
    from raybench.tracking import format_leaderboard, leaderboard
    print(format_leaderboard(leaderboard(args.tracking_uri, args.dataset, sweep_id=args.sweep_id,
                                         all_sweeps=args.all_sweeps)))
    return 0


def image_paths(arguments: list[str]) -> list[Path]:
    """Files as given; a folder stands for its image files (sorted, not recursive)."""
    from raybench.data.io import IMAGE_SUFFIXES
    paths = []
    for arg in map(Path, arguments):
        if arg.is_dir():
            paths += sorted(p for p in arg.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(arg)
    return paths


def cmd_predict(args) -> int:
    import numpy as np
    from PIL import Image

    from raybench import best_model
    from raybench.data.io import read_image
    from raybench.errors import DatasetError
    det = best_model(args.category, dataset=args.dataset, method=args.method, tracking_uri=args.tracking_uri)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    image_cut, pixel_cut = det.image_threshold, det.pixel_threshold
    paths, chunk, scored, unreadable = image_paths(args.images), 32, 0, 0
    for start in range(0, len(paths), chunk):  # results appear as they come
        batch = []
        for path in paths[start:start + chunk]:  # each file read once; a bad one is named and skipped
            try:
                batch.append((path, read_image(path)))
            except DatasetError as err:
                print(f"skipped: {err}", file=sys.stderr)
                unreadable += 1
        if not batch:
            continue
        scores, maps = det.predict([image for _, image in batch], batch_size=chunk, map_size="input")
        for (path, _), score, amap in zip(batch, scores, maps):
            verdict = "?" if image_cut is None else ("anomalous" if score >= image_cut else "normal")
            print(f"{score:.6f}\t{verdict}\t{path}", flush=True)
            if out:
                stem = f"{scored:03d}_{path.stem}"  # the index keeps same-named files from different folders apart
                np.save(out / f"{stem}_map.npy", amap)
                # one scale for every image: black 0, mid-grey at the pixel threshold, white at twice it
                scale = 2 * pixel_cut if pixel_cut else float(amap.max()) or 1.0
                Image.fromarray((np.clip(amap / scale, 0, 1) * 255).astype(np.uint8)).save(out / f"{stem}_map.png")
                if pixel_cut is not None:
                    Image.fromarray(((amap >= pixel_cut) * 255).astype(np.uint8)).save(out / f"{stem}_mask.png")
            scored += 1
    if unreadable:
        print(f"{unreadable} file(s) could not be read (listed above); {scored} scored", file=sys.stderr)
    return 1 if unreadable else 0


def cmd_methods(args) -> int:
    import dataclasses

    from raybench.methods import get_method, method_names
    for name in method_names():
        spec = get_method(name)
        print(f"{name}: {spec.description}")
        for f in dataclasses.fields(spec.config_cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            print(f"    {f.name} = {default!r}")
    return 0


def main(argv=None) -> int:
    from raybench.errors import RaybenchError
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled") if args.command == "sweep" and not args.address else None
    handler = {"sweep": cmd_sweep, "leaderboard": cmd_leaderboard, "predict": cmd_predict,
               "methods": cmd_methods}[args.command]
    try:
        return handler(args)
    except (RaybenchError, ValueError, KeyError) as err:
        print(f"raybench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
