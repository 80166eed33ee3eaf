"""Headless command line: ``python -m audiostory_core generate|plan|dub|continue|download``."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
