"""``python -m adaptflow`` runs the CLI."""

from adaptflow.cli import main

main()
