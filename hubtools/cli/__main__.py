"""`python -m hubtools.cli ...`, as the `hubtools` console script."""

from hubtools.cli import main

main()
