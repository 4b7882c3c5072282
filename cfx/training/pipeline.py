"""One training pipeline for ``python -m cfx train`` and the app: the detectors, the base models
and the explainers' own models of each category, in that order (explaining never trains)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from cfx.config import IMAGE_SIZE
from cfx.detectors.calibration import DEFAULT_TARGET_FPR
from cfx.errors import ModelMissingError
from cfx.models.bundle import category_dir, read_card
from cfx.models.identity import guard_overwrite
from cfx.training.base import DEFAULT_EPOCHS, train_category
from cfx.training.patchcore import fit_patchcore


def train_explainer_models(root, category: str, dataset: str, seed: int = 0, progress: bool = True) -> None:
    """The explainers' own models of a category whose VAE is trained: the gradient method's latent
    classifier ensemble (explaining never trains it)."""
    from cfx.explainers._util import set_data_root, train_images
    from cfx.models.bundle import load_bundle
    from cfx.training.ensemble import save_latent_ensemble, train_latent_ensemble

    bundle = load_bundle(dataset, category, detector="vae")
    set_data_root(bundle, root)
    save_latent_ensemble(bundle, train_latent_ensemble(bundle, train_images(bundle), seed=seed), seed=seed)


def default_input_size(image_size: int) -> int:
    """PatchCore's backbone input side for working images of ``image_size``: 1.75 x, a multiple of 8
    (224 at 128 px). Measured on the real screw sample (BENCHMARKS.md): at 256 px, 448 gave image
    AUROC 0.935 where 224 gave 0.377."""
    return int(round(image_size * 1.75 / 8)) * 8


def fitted_image_size(dataset: str, category: str) -> int | None:
    """The working image size of a category's fitted models (its card), or None when it has none."""
    try:
        size = read_card(dataset, category).get("image_size")
    except ModelMissingError:
        return None
    return size if isinstance(size, int) else None


def train(root: str | Path, category: str, dataset: str, detector: str = "all", epochs: int = DEFAULT_EPOCHS,
          seed: int = 0, input_size: int | None = None, alpha: float | None = None, base_only: bool = False,
          progress: bool = True, log: Callable[[str], None] = print, image_size: int | None = None,
          force: bool = False, target_fpr: float = DEFAULT_TARGET_FPR) -> None:
    """Fit what a category needs: PatchCore (``detector`` patchcore or all), then the AE, VAE
    detector and classifier (vae or all), then the latent ensemble (unless ``base_only``), all on images of ``image_size`` px (default: the size of the models
    the category already has, so that fitting one detector never drops the other; else
    :data:`~cfx.config.IMAGE_SIZE`). PatchCore's backbone sees ``input_size`` (default
    :func:`default_input_size`). Every detector's threshold is set at ``target_fpr``
    (:mod:`cfx.detectors.calibration`). Models of the category fitted on another data root are not
    replaced unless ``force`` (:func:`~cfx.models.identity.guard_overwrite`).

    Raises:
        DataError: bad data or arguments, or models of another root in the way (one line).
    """
    guard_overwrite(category_dir(dataset, category), root, category, force)
    image_size = image_size or fitted_image_size(dataset, category) or IMAGE_SIZE
    if detector in ("patchcore", "all"):
        fit_patchcore(root, category, dataset, seed=seed, image_size=image_size, target_fpr=target_fpr,
                      input_size=input_size or default_input_size(image_size))
    if detector not in ("vae", "all"):
        return
    train_category(root, category, dataset, epochs=epochs, seed=seed, progress=progress, alpha=alpha,
                   image_size=image_size, target_fpr=target_fpr)
    if base_only:
        return
    train_explainer_models(root, category, dataset, seed=seed, progress=progress)
    log(f"{dataset}/{category}: latent ensemble written")
