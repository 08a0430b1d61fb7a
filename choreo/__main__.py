"""`python -m choreo` runs the command line."""

from choreo.ops.cli import main

main()
