"""Where one ``explain`` call's time goes: cProfile of the chosen methods on a detected demo defect,
models warm (after one call on another image), with the counts of the detector's calls.

Usage: python bench/profile_explain.py [--detector patchcore] [--category brick]
    [--methods recon,gradcam,lime,shap,clear,dice,gradient] [--top 30]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explainers import METHODS, detected_images, machine  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default="patchcore")
    ap.add_argument("--category", default="brick")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    import cfx.explainers as E
    from cfx.data.demo import ensure_demo
    from cfx.models.bundle import load_bundle

    root = ensure_demo()
    b = load_bundle("demo", args.category, detector=args.detector)
    E.set_data_root(b, root)
    warm, images, _ = detected_images(b, root, args.category, 1)
    methods = args.methods.split(",")
    E.explain(b, warm, methods, "score")
    b.loaded.edit_setups.clear()
    prof = cProfile.Profile()
    prof.enable()
    res = E.explain(b, images[0], methods, "score")
    prof.disable()
    print(f"### cProfile of one explain call ({args.detector}, {args.category}): {machine()}\n")
    print(", ".join(f"{m} {e.seconds:.3f} s ({e.info.get('evaluations', 0)} evaluations)" for m, e in res.items()))
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(args.top)
        print(f"\n#### by {key}\n```\n{buf.getvalue().strip()}\n```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
