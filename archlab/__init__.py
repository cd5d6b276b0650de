"""archlab: autonomous architecture discovery for sequence models."""

__version__ = "0.1.0"
