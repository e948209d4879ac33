"""``python -m layerscope``: the CLI, so launchers can run it (``torchrun -m layerscope sweep ...``,
``accelerate launch -m layerscope sweep ...``)."""

import sys

from layerscope.cli import main

if __name__ == "__main__":
    sys.exit(main())
