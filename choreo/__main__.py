"""`python -m choreo` runs the command line."""

from choreo.cli import main

main()
