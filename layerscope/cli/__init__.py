"""``layerscope`` command line: a thin layer over the Python API.

One module per command (``record``, ``sweep``, ``rank``, ``report``, ``finetune``,
``bench``), each a parser plus calls into the library; shared options in
:mod:`layerscope.cli.options`.  Further commands come from installed packages through the
``layerscope.commands`` entry points (the testbed adds ``testbed`` and ``eval``), listed in
:data:`layerscope.registry.COMMANDS`.  Heavy libraries (torch, diffusers, esda) are
imported inside the commands, so ``layerscope --help`` answers in well under a second.
Usage errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys

from layerscope.cli.options import Parser
from layerscope.errors import LayerScopeError
from layerscope.registry import COMMANDS

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    from layerscope import __version__

    parser = Parser(
        prog="layerscope",
        description="Record, rank and report per-layer text-visual similarity in I2V diffusion transformers.",
    )
    parser.add_argument("--version", action="version", version=f"layerscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS.names():
        COMMANDS.load(name)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("layerscope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `layerscope plan ... | head`: the reader left; nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except LayerScopeError as error:
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"layerscope {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
