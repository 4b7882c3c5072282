"""Grad-CAM (captum's ``LayerGradCam``) of the classifier.

Grad-CAM needs a class score read off a convolutional feature map: the classifier's logit of
"anomalous" through its last convolutional block (``bundle.classifier.features``, 16x16 at
128 px), upsampled bilinearly to the image, ReLU as in the paper (only evidence *for* the class).
For the detector's targets the map is still the classifier's (``info["explains"]``): the
detector has no class-activation layer. ``model="detector"`` instead back-propagates the
detector's score to the VAE encoder's third block; on the demo that map localises defects no
better than chance (the combined score is dominated by the latent Mahalanobis term, a global
quantity), so it is not the default.

captum registers its forward hook for the duration of one call and removes it afterwards. A hook
on a shared module would also see another thread's forward pass, so the whole call holds
``bundle.lock`` (an RLock: callers that already hold it, like the app, are fine).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from cfx.explainers.base import Explainer, Explanation, register


def target_layer(bundle, model: str = "classifier") -> torch.nn.Module:
    """The layer Grad-CAM reads: the classifier's last block, or the VAE encoder's third."""
    if model == "classifier":
        return bundle.classifier.features
    enc = bundle.vae.enc
    # [conv, act] x 4: the activation after the third conv (H/8); the last one is only H/16
    return enc[5] if len(enc) >= 8 else enc


@register
class GradCAM(Explainer):
    """Grad-CAM of the classifier (one forward and one backward pass)."""

    name: ClassVar[str] = "gradcam"
    kind: ClassVar[str] = "heatmap"
    label: ClassVar[str] = "Grad-CAM"
    defaults: ClassVar[dict[str, Any]] = {"model": "classifier", "relu": True}
    heavy: ClassVar[bool] = False

    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        from captum.attr import LayerAttribution, LayerGradCam

        b = self.bundle
        model = str(params["model"])
        if model == "classifier":
            def forward(x: torch.Tensor) -> torch.Tensor:
                return b.classifier(x)  # the logit, as Grad-CAM uses the pre-softmax score
        elif model == "detector":
            det_target = "score" if target == "classifier" else target

            def forward(x: torch.Tensor) -> torch.Tensor:
                return b.score(x, det_target)
        else:
            raise ValueError(f"unknown model {model!r}; choose classifier or detector")

        x = b.to_tensor(image[None]).clone()
        with b.lock, torch.inference_mode(False), torch.enable_grad():
            cam = LayerGradCam(forward, target_layer(b, model))
            attr = cam.attribute(x, relu_attributions=bool(params["relu"]))
            attr = LayerAttribution.interpolate(attr.detach(), tuple(image.shape[-2:]), "bilinear")
        exp = self.base(image, target)
        exp.heatmap = attr[0].mean(0).float().cpu().numpy().astype(np.float32)
        exp.signed = not params["relu"]
        exp.info["explains"] = "classifier" if model == "classifier" else f"detector {det_target}"
        exp.info["layer"] = "classifier.features" if model == "classifier" else "vae.enc[5]"
        if model == "classifier" and target != "classifier":
            exp.info["note"] = "Grad-CAM shows the classifier's evidence; the detector has no class-activation layer"
        return exp
