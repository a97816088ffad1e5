"""kubeslim: prune, convert and quantize PyTorch CNNs into small, fast OpenVINO models."""

__version__ = "0.1.0"
