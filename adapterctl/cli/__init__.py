"""The command line: one typer sub-app per command group, a thin layer over the library."""
