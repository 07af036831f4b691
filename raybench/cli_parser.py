"""The `raybench` command line's grammar: every command, flag, help text and default (cli.py
parses with it, calls one wing and prints)."""
from __future__ import annotations

import argparse


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
                        "or of the training normals (synthetic); default 0.3 (crossfit: halves)")
    p.add_argument("--val-mode", default=None, choices=("crossfit", "real", "synthetic"),
                   help="crossfit (default; the demo: real): the test split in two folds, each fold's choice reported on the "
                        "other (every test image reported once); real: a validation share of the test images; "
                        "synthetic: held-out normals + synthetic anomalies (docs/protocol.md)")
    p.add_argument("--val-normals", type=float, default=0.1,
                   help="share of the training normals held out into validation's good side (crossfit, real; "
                        "default 0.1)")
    p.add_argument("--few-shot-pool", type=int, default=None,
                   help="real anomalies set aside for few-shot training, scored by no method (default: the most "
                        "n_anomalies any method of this command may draw; 0 when none trains on real anomalies)")
    p.add_argument("--accept-weak-validation", action="store_true",
                   help="run even when a category's validation is too small to rank trials (default: stop, "
                        "saying what to change)")
    p.add_argument("--select", default="category", choices=("category", "dataset"),
                   help="category (default): a configuration per category; dataset: one configuration for "
                        "all categories by mean validation (the papers' protocol: one study, each trial "
                        "trains every category)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation/test split (default: 0)")
    p.add_argument("--final-seeds", type=int, default=None,
                   help="retrain each category's chosen config with N new seeds; test mean +- std (demo: 2, else 0)")

    p = sub.add_parser("leaderboard", help="per category x method: chosen on validation, test beside it")
    p.add_argument("dataset", nargs="?", default=None, help="only this dataset's experiment (default: every raybench-* experiment)")
    p.add_argument("--all-sweeps", action="store_true", help="every sweep (default: the latest one)")
    p.add_argument("--sweep-id", default=None, help="this sweep (default: the latest one)")
    p.add_argument("--format", default="table", choices=("table", "json", "csv"),
                   help="table (default, for people), json (a list of rows: test figures with 95%% bootstrap "
                        "intervals, tied_with_best, final seeds' mean/std; NaN as null) or csv (an interval "
                        "as _low/_high columns)")
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
