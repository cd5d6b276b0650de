class UserError(Exception):
    """A mistake the user can fix; the CLI prints its message as one line and exits non-zero."""

    exit_code = 2  # a usage error; subclasses for what is not the user's input say otherwise
