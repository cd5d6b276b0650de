"""What the CLI's commands do to a stored run, above the store: replay, fork, status, doctor."""
