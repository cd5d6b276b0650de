"""`python -m archlab`: the same command line as the `archlab` script."""

from archlab.cli import main

main()
