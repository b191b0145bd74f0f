"""`python -m ddkit ...` (and `torchrun ... -m ddkit distill ...`)."""
import sys

from .cli import main

sys.exit(main())
