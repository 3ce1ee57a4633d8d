"""LIMITR: local and global alignment of chest X-rays and radiology reports.

The library knows nothing of DVC, Typer or params.yaml: every function takes plain
arguments or typed configs, and reports progress through callbacks.
"""

__version__ = "0.1.0"
