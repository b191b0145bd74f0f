"""`python -m ddkit ...` (and `torchrun ... -m ddkit distill ...`), and the `ddkit` command."""
import sys

from . import INTERRUPTED


def entry() -> int:
    try:
        from .cli import main  # imports torch: seconds in which a Ctrl-C is an interruption like any later one
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(entry())
