"""``layerscope bench``: the paper's instruction-following benchmark for any local I2V checkpoint.

Why a package of its own: the paper's Tables 1-3 need more than the shapes world's
programmatic scorer -- a prompt set with yes/no questions per prompt, videos from five
seeds, a judge that answers the questions (a vision-language model for real videos),
I2V subject/background consistency, and all-correct rates with intervals.  The pieces:

* :mod:`.prompts` reads the JSONL prompt file (``image``, ``prompt``, ``dimension``,
  ``questions``, optional ``keywords``/``id``/``scene``);
* :mod:`.generation` makes one mp4 + first-frame PNG per (prompt, seed), resumably;
* :mod:`.judges` is the one small protocol every judge follows, and :mod:`.vlm` the
  transformers judge (yes-minus-no logit margin);
* :mod:`.consistency` computes VBench-I2V-style subject and background consistency;
* :mod:`.results` aggregates (intervals, paired tests), :mod:`.report` writes the HTML;
* :mod:`.run` ties them together for the CLI.

The core never imports the testbed: the shapes-world judge lives in
:mod:`layerscope_testbed.shapes.bench` (a separate distribution) and reaches the judge
registry, :data:`layerscope.registry.JUDGES`, through an entry point.
Importing this package imports nothing heavy.
"""

from __future__ import annotations
