"""Models: plain torch modules (:mod:`cfx.models.nets`) and the bundle that loads them (:mod:`cfx.models.bundle`)."""
from cfx.models.nets import VAE, Classifier, ConvAutoencoder

__all__ = ["VAE", "Classifier", "ConvAutoencoder"]
