"""Fitting a category's models, in one place: the PatchCore detector (no training), the autoencoder,
the VAE multi-score detector and the classifier, the gradient method's latent ensemble and the
concept generator; :func:`~cfx.training.pipeline.train` runs them for ``python -m cfx train``.

Only train/good images are used. PatchCore's memory bank takes all of them, and each is also
scored out of fold (against a bank searched without its fold); the networks train on 85% and the held-out 15% (the
same for every model of a category) normalise the VAE's scores. Every detector's threshold is
placed at a stated false-alarm rate on those *real* normal scores
(:mod:`cfx.detectors.calibration`); synthetic anomalies are only a secondary check (the expected
TPR at the threshold, in the card), and choose the classifier's threshold and the VAE's alpha
and KL weight. The classifier learns
normal vs synthetic anomalies made from train/good, never test images.


Modules: :mod:`~cfx.training.common` (seeding, split, card), :mod:`~cfx.training.patchcore`,
:mod:`~cfx.training.base` (AE, VAE, classifier), :mod:`~cfx.training.ensemble`,
:mod:`~cfx.training.concepts`, :mod:`~cfx.training.pipeline`.
"""
from cfx.training.base import (  # noqa: F401
    DEFAULT_EPOCHS,
    train_autoencoder,
    train_category,
    train_classifier,
)
from cfx.training.common import (  # noqa: F401
    MIN_TRAIN_IMAGES,
    VAL_FRACTION,
    seed_everything,
    split_indices,
)
from cfx.training.patchcore import fit_patchcore  # noqa: F401
from cfx.training.pipeline import train, train_explainer_models  # noqa: F401
