"""CLI for this verb (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this verb's commands to the root app."""
