"""Only fla.models.utils.Cache (a placeholder for type annotations) exists in archlab's stand-in."""
