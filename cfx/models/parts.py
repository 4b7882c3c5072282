"""The parts of a category's models that are loaded or computed on first use.

One :class:`LoadedParts` belongs to a loaded :class:`~cfx.models.bundle.ModelBundle` and is shared
by its views (:meth:`~cfx.models.bundle.ModelBundle.using`) and by every session of the app, like
the models themselves; each part is filled once, under the bundle's lock. Results of a session
(explanations, the selection) never live here.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

#: counterfactual search setups kept per bundle (each: two images and a few hundred scores)
EDIT_SETUPS = 8


@dataclass
class LoadedParts:
    """Attributes:
        data_root: where the category's data lives (the CLI and the app set it after loading;
            the train images are read from it).
        train_images: the category's train/good images at the models' size and channels.
        pca: DiCE's PCA of the train images, by number of components.
        pca_rows: the train images in that PCA (DiCE's reference rows), by number of components.
        latent_ensemble: the gradient method's latent classifier ensemble (``ensemble.pt``).
        edit_setups: what every counterfactual search of one image starts from (the detector's
            map, the normal content, the smallest edit ``R*`` and the scores of the edits'
            compositions), by (bundle key, target, image); the last :data:`EDIT_SETUPS` only
            (:meth:`cfx.explainers.counterfactual.CounterfactualExplainer.setup`).
    """

    data_root: Path | None = None
    train_images: np.ndarray | None = None
    pca: dict[int, Any] = field(default_factory=dict)
    pca_rows: dict[int, np.ndarray] = field(default_factory=dict)
    latent_ensemble: nn.Module | None = None
    edit_setups: OrderedDict = field(default_factory=OrderedDict)

    def set_data_root(self, root: str | Path) -> None:
        """Point at another data root; what was read from the previous one is dropped."""
        root = Path(root)
        if root != self.data_root:
            self.data_root = root
            self.train_images = None
            self.pca.clear()
            self.pca_rows.clear()
            self.edit_setups.clear()  # the normal content came from the train images
