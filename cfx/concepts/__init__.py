"""Concept counterfactuals: several distinct ways an anomaly could become normal, each a
continuous path an inspector walks with a slider (after Liznerski et al., "Reimagining
Anomalies: What If Anomalies Were Normal?").

**The generator.** ``G(z, target, k, source)`` is a small MLP that edits a latent ``z`` of the
detector's VAE (``bundle.vae``, 64-d) for concept ``k`` in ``0..K-1`` (K = 3 by default) so that
the edited image scores ``target`` on the detector's combined score, ``source`` being the score of
the image ``z`` came from. It is trained, with the detector frozen, on train/good images and
synthetic anomalies made from them (:func:`cfx.data.synth.synthesize`); never on test images.

**alpha.** The user-facing ``alpha`` in [0, 1] is a position on the image's own path, mapped
onto the score scale by :func:`target_score`::

    target(alpha) = s_normal + alpha * max(score(x) - s_normal, 0)

``alpha = 1`` is the image's own score (the edit is the identity), ``alpha = 0`` is *clearly
normal*: ``s_normal = min(Q_q(normal), threshold - 0.5 * SD(normal))``, the lower quartile
(``q = 0.25``) of the scores of held-out normal images (the validation split of train/good that
calibrated the detector), and in any case half a normal SD below the decision threshold.

**Images.** A purely decoded image ``vae.decode(z')`` lacks the sensor noise and fine texture of a
real image; the detector notices (on the demo tablet, decoded *normal* images score ~30 against a
threshold below 1). So the counterfactual keeps the original's pixels and applies the concept's
edit as a change of the decoding, while the part of the image the VAE cannot explain *where the
detector finds it abnormal* fades out as alpha goes to 0::

    x'(alpha, k) = clip(x + [decode(z') - decode(z)] - (1 - alpha) * m_k * (x - decode(z)), 0, 1)

with ``z = encode(x)``, ``z' = G(z, target(alpha), k, score(x))`` and ``m_k`` in [0, 1] a soft
mask of the detector's own calibrated heatmap (1.0 = the 99.9th percentile of the per-pixel error
of normal images): 0 below ``lo``, 1 above ``2 lo``, linear between, with
``lo = 0.2 * 4 ** (1 - 2 gamma_k)`` (:func:`fade_mask`). The fade strength ``gamma_k`` in [0, 1]
is fitted per image and concept, not learned (:func:`fit_fade`): the smallest value on a grid at
which the concept's alpha = 0 image scores at most ``s_normal`` for the real detector, i.e. the
least of the image that has to fade (on a texture the detector explains well only the defect
fades; on the hypersensitive demo tablet also its rim). At alpha = 0 the faded pixels show the
concept's decoded normal content and the rest of the image moves by the concept's edit only.
Everything but ``decode(z')`` is computed once per image (:func:`prepare_for`), so a slider step
costs one decoder pass (plus one detector pass to score it).

**Losses** (weights in :data:`LOSS_WEIGHTS`): the detector's score of ``x'`` pulled to the target
(Huber, in units of ``threshold - s_normal``; scoring below the target counts a quarter);
reconstruction ``G(z, score(x), k, score(x)) ~ z``; cycle consistency
``G(z', score(x), k, target) ~ z`` (latents in units of the SD of the VAE's aggregate posterior);
a concept classifier ``R`` (a prototype classifier with a fixed temperature, trained jointly as in
the paper) that must tell ``k`` from the change ``decode(z') - decode(z)`` (disentanglement; its
prototypes start on the principal modes of normal variation, so concepts are the same across
seeds); and a proximity penalty (mean squared change of the decoding). In training the fade uses
one gamma per image, fitted without a latent edit.

Files: ``concepts.pt`` in :func:`cfx.models.bundle.category_dir`, written with
:func:`cfx.models.bundle.save_module` (``torch.load(weights_only=True)``-loadable).

Modules: :mod:`~cfx.concepts.model` (the generator, the fade, loading), :mod:`~cfx.concepts.path`
(paths and slider steps); training is :mod:`cfx.training.concepts`; the registered explanation
method is :mod:`cfx.explainers.concepts`.
"""
from cfx.concepts.model import (  # noqa: F401
                                DEFAULT_ALPHAS,
                                DEFAULT_K,
                                FILENAME,
                                GAMMA_GRID,
                                GAMMA_RANGE,
                                NORMAL_QUANTILE,
                                SLIDER_ALPHAS,
                                THRESHOLD_MARGIN_SD,
                                ConceptClassifier,
                                ConceptGenerator,
                                Prepared,
                                compose,
                                concepts_path,
                                edit,
                                fade_mask,
                                fit_fade,
                               
                                load_concepts,
                                prepare,
                                prepare_for,
                                target_score,
                                train_hint,
)
from cfx.concepts.path import (  # noqa: F401
                                ConceptPath,
                                concept_path,
                                concept_step,
                                local_steps,
                                render,
)
