"""The `adm` command: argument parsing only. Nothing imports this package."""
