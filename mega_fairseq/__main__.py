"""``python -m mega_fairseq`` (or ``mega-fairseq-user-dir``) prints the ``--user-dir`` path."""
import os
import sys


def main() -> None:
    # Only the path is needed: avoid importing fairseq (slow) just to print it.
    print(os.path.dirname(os.path.abspath(__file__)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
