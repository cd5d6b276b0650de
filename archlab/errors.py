class UserError(Exception):
    """A mistake the user can fix; the CLI prints its message as one line and exits non-zero."""
