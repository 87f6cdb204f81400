"""prnad: industrial anomaly detection and localisation with Prototypical Residual Networks (CVPR 2023)."""

__version__ = "0.1.0"
