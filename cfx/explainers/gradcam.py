"""Grad-CAM (captum's ``LayerGradCam``) of PatchCore's score or of the classifier.

PatchCore (the ``score`` target with the PatchCore detector): the score is a function of the
backbone's aggregated feature map (152 x 28 x 28 at 224 px), so Grad-CAM weighs those features by
the mean gradient of the score and keeps the positive evidence (``info["explains"] =
"patchcore"``). Otherwise it is the classifier's Grad-CAM:

Grad-CAM needs a class score read off a convolutional feature map: the classifier's logit of
"anomalous" through its last convolutional block (``bundle.classifier.features``, 16x16 at
128 px), upsampled bilinearly to the image, ReLU as in the paper (only evidence *for* the class).
For the detector's targets the map is still the classifier's (``info["explains"]``): the
detector has no class-activation layer (back-propagating its score to the VAE encoder's feature
maps was tried: on the demo that map localises defects no better than chance, as the combined
score is dominated by the latent Mahalanobis term, a global quantity).

Hooks: captum registers a forward hook on the layer for one call and removes it afterwards. A hook
on the shared ``classifier.features`` would also fire on another thread's forward pass (a page
scoring images while this one explains) and mix that thread's activations into this map. So
each call hooks its own throw-away wrapper around the layer (:class:`_Tap`), which only this
call's forward function goes through. It takes no random draws and reads no shared state, so it
does not wait for ``bundle.lock`` (a heavy method holds that for seconds; Grad-CAM is part of the
app's first answer).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from cfx.explainers.base import Explainer, Explanation, register


class _Tap(nn.Module):
    """A per-call wrapper of a shared layer: captum hooks this, never the shared module."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer(h)


def classifier_logit_through(clf, tap: nn.Module):
    """The classifier's forward (logit of "anomalous") with ``tap`` in place of ``clf.features``."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        return clf.logit_from_features(tap(clf.body(x)))
    return forward


@register
class GradCAM(Explainer):
    """Grad-CAM of the classifier (one forward and one backward pass)."""

    name: ClassVar[str] = "gradcam"
    order: ClassVar[int] = 1
    heavy: ClassVar[bool] = False
    kind: ClassVar[str] = "heatmap"
    label: ClassVar[str] = "Grad-CAM"
    defaults: ClassVar[dict[str, Any]] = {"relu": True}
    #: PatchCore's score has its own Grad-CAM; the VAE detector's targets are explained through the classifier
    needs: ClassVar[dict[str, tuple[str, ...]]] = {"vae": ("classifier",)}

    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        from captum.attr import LayerAttribution, LayerGradCam

        b = self.bundle
        patchcore = target == "score" and b.detector_name == "patchcore"
        x = b.to_tensor(image[None]).clone()
        with torch.inference_mode(False), torch.enable_grad():
            if patchcore:
                det, size = b.detector, tuple(image.shape[-2:])
                tap = _Tap(nn.Identity())

                def forward(t: torch.Tensor) -> torch.Tensor:
                    return (det.raw_from_features(tap(det.features(t)), size)[1] - det.norm[0]) / det.norm[1]
            else:
                tap = _Tap(b.classifier.features)
                forward = classifier_logit_through(b.classifier, tap)
            cam = LayerGradCam(forward, tap)
            attr = cam.attribute(x, relu_attributions=bool(params["relu"]))
            attr = LayerAttribution.interpolate(attr.detach(), tuple(image.shape[-2:]), "bilinear")
        exp = self.base(image, target)
        exp.heatmap = attr[0].mean(0).float().cpu().numpy().astype(np.float32)
        exp.signed = not params["relu"]
        exp.info["explains"] = "patchcore" if patchcore else "classifier"
        exp.info["layer"] = "backbone features (blocks 4 + 10)" if patchcore else "classifier.features"
        if not patchcore and target != "classifier":
            exp.info["note"] = "Grad-CAM shows the classifier's evidence; the VAE detector has no class-activation layer"
        if not np.any(exp.heatmap):
            exp.info["note"] = ("all-zero map: no location carries positive evidence (after the ReLU) for the "
                                f"{exp.info['explains']} at this image")
        return exp
