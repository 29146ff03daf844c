"""`python -m kvcpu` is the `kvcpu` command."""

from .cli import main

main()
