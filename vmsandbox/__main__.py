"""``python -m vmsandbox``: the command line (used when the console script is not on PATH)."""
from .cli import main

main()
