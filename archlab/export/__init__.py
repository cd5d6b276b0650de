"""Exports of a run's nodes: `archlab export RUN NODE OUT_DIR` writes a Hugging Face model directory (hf.py)."""
