"""``python -m cfx``: data, train, evaluate, explain, concepts, audit.

Bad input (a missing root, a folder that is not MVTec, an unknown category, a missing model)
exits with code 2 and one readable line on stderr.
"""
from __future__ import annotations

import argparse
import os
import importlib
import json
import logging
import sys
from pathlib import Path

from cfx.errors import CfxError

#: Sub-commands implemented in their own modules: name -> module with add_arguments(p) and run(args) -> int.
PLUGINS = {
    "explain": ("cfx.commands.explain", "explain an image with one or all methods"),
    "concepts": ("cfx.commands.concepts", "concept counterfactuals: named kinds of change, each walked from the image to its edit"),
    "audit": ("cfx.commands.audit", "mask-Jaccard audit of a category (or all), on Dask distributed"),
    "inspect": ("cfx.commands.inspect", "score every test image and store verdicts, scores and maps"),
    "teach": ("cfx.commands.teach", "teach the detector a lot's overruled false alarms; list and restore its versions"),
}


def add_data_args(p: argparse.ArgumentParser, category_all: bool = False) -> None:
    p.add_argument("--data-root", help="MVTec AD root (default: $CFX_DATA_ROOT, else the embedded demo)")
    p.add_argument("--category", help="category name" + (" or 'all'" if category_all else "") +
                   " (default: the first category)")


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--scheduler`` of the commands that run on Dask (:mod:`cfx.cluster`)."""
    p.add_argument("--workers", type=int,
                   help="Dask worker processes (default: one per core, two on a CUDA machine; 0: in this process)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (default: $CFX_DASK_SCHEDULER, "
                                       "else a LocalCluster)")


def runs_locally(args: argparse.Namespace) -> bool:
    """Whether ``--workers 0`` (and no scheduler) asks for this process instead of Dask.

    Raises:
        DataError: a negative ``--workers``.
    """
    from cfx.errors import DataError

    if args.workers is not None and args.workers < 0:
        raise DataError(f"--workers must be 0 or more, not {args.workers}")
    return args.workers == 0 and not (args.scheduler or os.environ.get("CFX_DASK_SCHEDULER"))


def add_detector_arg(p: argparse.ArgumentParser) -> None:
    """``--detector``: which fitted detector to explain or evaluate (default: PatchCore where fitted)."""
    from cfx.detectors import DETECTORS

    p.add_argument("--detector", choices=list(DETECTORS),
                   help="the detector (default: the first fitted of " + ", ".join(DETECTORS) + ")")


def _cmd_data(args: argparse.Namespace) -> int:
    from cfx.data.demo import generate

    root = generate(args.out, seed=args.seed, force=args.force)
    print(root)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from cfx.errors import DataError
    from cfx.models.bundle import dataset_name
    from cfx.resolve import categories_for, resolve_root
    from cfx.training import train

    if args.epochs < 1:
        raise DataError(f"--epochs must be at least 1 (got {args.epochs})")
    if args.image_size is not None and (not 64 <= args.image_size <= 512 or args.image_size % 16):
        raise DataError(f"--image-size must be a multiple of 16 between 64 and 512 (got {args.image_size})")
    if not 0 < args.target_fpr < 0.5:
        raise DataError(f"--target-fpr must lie between 0 and 0.5 (got {args.target_fpr})")
    if args.input_size is not None and (not 32 <= args.input_size <= 1024 or args.input_size % 8):
        raise DataError(f"--input-size must be a multiple of 8 between 32 and 1024 (got {args.input_size})")
    root = resolve_root(args.data_root)
    ds = dataset_name(root)
    for cat in categories_for(root, args.category):
        train(root, cat, ds, detector=args.detector, epochs=args.epochs, seed=args.seed, input_size=args.input_size,
              image_size=args.image_size, alpha=args.alpha, base_only=args.base_only, progress=not args.quiet,
              force=args.force, target_fpr=args.target_fpr)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cfx.metrics.detection import evaluate_category
    from cfx.models.bundle import load_for_root
    from cfx.resolve import categories_for, resolve_root

    root = resolve_root(args.data_root)
    cats = categories_for(root, args.category)
    results = {}
    for cat in cats:
        bundle = load_for_root(root, cat, detector=args.detector)
        results[cat] = evaluate_category(bundle, root, cat)
    out = {"categories": results} if args.category == "all" else results[cats[0]]
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    else:
        def f(v) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        for cat, r in results.items():
            extra = "".join(f", {k[len('image_auroc_'):]} {f(v)}" for k, v in r.items() if k.startswith("image_auroc_"))
            if "classifier_auroc" in r:
                extra += f", classifier {f(r['classifier_auroc'])}"
            print(f"{cat} [{r['detector']}]: image AUROC {f(r['image_auroc'])}{extra}, pixel {f(r['pixel_auroc'])}; "
                  f"at threshold {r['threshold']:.3f}: FPR on good {f(r['fpr_good'])}, TPR on defects "
                  f"{f(r['tpr_defect'])}, F1 {r['f1']:.3f}; n={r['n_test']}")
            if r.get("expected_fpr"):
                e = r["expected_fpr"]
                t = (r.get("expected_tpr") or {}).get("mean")
                print(f"{cat}: the fit expected FPR {e['mean']:.3f} (95% bound {e['upper_95']:.3f}) at a target of "
                      f"{r['target_fpr']:g}" + ("" if t is None else f", TPR {t:.2f} on synthetic defects"))
            if r.get("hint"):
                print(f"{cat}: hint: {r['hint']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    prog = "cfx" if Path(sys.argv[0]).name == "cfx" else "python -m cfx"  # the console command or the module
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="generate datasets")
    dsub = p.add_subparsers(dest="what", required=True)
    pd = dsub.add_parser("demo", help="generate the embedded demo dataset (MVTec layout)")
    pd.add_argument("--out", help="output folder (default: the cfx cache)")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--force", action="store_true", help="regenerate even if present")
    pd.set_defaults(func=_cmd_data)

    p = sub.add_parser("train", help="fit the detectors and train the models of a category")
    add_data_args(p, category_all=True)
    from cfx.training import DEFAULT_EPOCHS

    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of reconstruction in the combined score (default: chosen on validation, 0.6 on ties)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from cfx.detectors.calibration import DEFAULT_TARGET_FPR

    p.add_argument("--target-fpr", type=float, default=DEFAULT_TARGET_FPR,
                   help="the false-alarm rate on good parts each threshold is set at, estimated on normal "
                        f"training images the detector was not fitted on (default {DEFAULT_TARGET_FPR:g})")
    p.add_argument("--force", action="store_true",
                   help="replace models of the category that were fitted on another data root")
    p.add_argument("--base-only", action="store_true",
                   help="only the autoencoder, VAE detector and classifier (not the latent ensemble)")
    p.add_argument("--detector", choices=["patchcore", "vae", "all"], default="all",
                   help="patchcore: fit PatchCore only (seconds, no training); vae: train the autoencoder, VAE "
                        "detector, classifier and the explainers' models; all (default): both")
    p.add_argument("--image-size", type=int, default=None,
                   help="side of the square images every model of the category works on (default: the "
                        "size of its fitted models, else 128; 256 finds thin or small defects of real parts, "
                        "at about 10x the CPU cost; BENCHMARKS.md)")
    p.add_argument("--input-size", type=int, default=None,
                   help="side PatchCore resizes images to for its backbone (default 1.75 x --image-size: 224 "
                        "at 128 px; BENCHMARKS.md)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="AUROC, pixel AUROC and F1 on the test split")
    add_data_args(p, category_all=True)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_detector_arg(p)
    p.set_defaults(func=_cmd_evaluate)

    for name, (module, help_) in PLUGINS.items():
        p = sub.add_parser(name, help=help_)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(func=lambda a, n=name: _missing(n))
            continue
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes each record to the ``sys.stderr`` of the moment it is emitted, as ``cfx: <message>``."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("cfx: %(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr(level: int) -> None:
    """cfx's warnings (an image skipped, a mask resized, models fitted on a changed train/good) as
    one line each on stderr."""
    log = logging.getLogger("cfx")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.setLevel(level)
    log.propagate = False


def os_error_line(exc: OSError) -> str:
    """One readable line for an operating-system error (the file and the system's words)."""
    what = exc.strerror or type(exc).__name__
    names = [str(f) for f in (exc.filename, exc.filename2) if f]
    return f"cannot use {' -> '.join(names)}: {what}" if names else f"a file operation failed: {what}"


def _missing(name: str) -> int:
    print(f"cfx: the '{name}' command is not available in this build", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    _log_to_stderr(logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except CfxError as exc:
        print(f"cfx: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or vanished file: one line, not a traceback
        print(f"cfx: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
