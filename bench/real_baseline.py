"""Real-vs-real baseline for ``synthpacs evaluate``: one real dataset scored as if it were generated.

    python -m bench.real_baseline --home HOME --dataset fracatlas-train@v1 --real fracatlas-heldout@v1

The training part of FracAtlas against the held-out part gives the numbers a perfect generator of the
training distribution would reach (issue 16 states its targets relative to them). Same feature spaces,
settings and table as ``synthpacs evaluate``; memorization and TSTR are left out (the images *are* the
training set, so both are trivially 100 %).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.datasets import load_images, resolve_dataset
from models.metrics.evaluate import EvaluationSettings, FeatureCache, Inputs, evaluate_images
from models.metrics.features import HOGFeatures
from models.metrics.radiomics import RadiomicsFeatures


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.real_baseline", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", required=True, type=Path)
    p.add_argument("--dataset", required=True, help="the real set scored as if generated (NAME@vN)")
    p.add_argument("--real", required=True, help="the reference set (NAME@vN)")
    p.add_argument("--diversity-pairs", type=int, default=1000)
    p.add_argument("--tstr-epochs", type=int, default=30, help="accepted for symmetry with evaluate; unused")
    args = p.parse_args(argv)
    from service.cli.evaluate import results_table

    datasets = args.home / "datasets"
    as_generated, reference = resolve_dataset(datasets, args.dataset), resolve_dataset(datasets, args.real)
    radiomics = RadiomicsFeatures()
    try:
        inputs = Inputs(reference=load_images(reference), reference_key=reference.content_hash, extractors=[HOGFeatures(), radiomics],
                        cache=FeatureCache(args.home / "evaluations" / "feature-cache"))
        fake = load_images(as_generated)
        settings = EvaluationSettings(metrics=("fid", "kid", "precision_recall", "ssim_psnr", "diversity"), n=len(fake), diversity_pairs=args.diversity_pairs)
        results = evaluate_images(fake, inputs, settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        radiomics.close()
    results["reference"] = {"ref": reference.ref}
    print(f"real vs real: {as_generated.ref} ({as_generated.count} images) scored as generated, reference {reference.ref} ({reference.count} images)")
    print(results_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
