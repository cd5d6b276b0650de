"""Only fla.layers.utils (padding helpers) exists in archlab's stand-in: fla's layers need its kernels."""
