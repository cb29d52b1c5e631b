"""The command-line layer: typer apps that parse options, call the library and render results. No logic here."""
