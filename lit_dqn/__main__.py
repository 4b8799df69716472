import sys

from lit_dqn.cli import main

if __name__ == "__main__":
    sys.exit(main())
