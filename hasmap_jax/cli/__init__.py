"""The `hasmap` command line: one parser, one small module per command."""

from hasmap_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
