"""Deepen a trained Wan DiT without changing what it computes (``testbed train --grow-layers``).

Why: five blocks of continued training took the shapes-world model from 0.08 to 0.37
held-out all-correct, and the sixth (v7a, 3668 steps) gained +0.000.  v6's flow loss
(64 clips each, same noise draws, 2026-12-02) is 0.087 +- 0.013 on fresh held-out
scenes and 0.087 +- 0.017 on fresh training-split scenes, against 0.065 +- 0.008 on
clips it trained on: no compositional gap in the objective and a modest one to the
training clips, which suggests a 12-block, 96-wide DiT near its capacity rather than a
data problem (the hypothesis this option exists to test).  Training a bigger model
from scratch would throw away ~26,000 CPU steps, so the parent's blocks are kept and
new ones appended whose
residual branches start at zero (the output projections of self-attention,
cross-attention and the feed-forward): the grown model's output equals the parent's
to the last bit at step 0, and the new blocks learn from there (function-preserving
growth as in Net2Net, Chen et al. 2016; progressive stacking, Gong et al. 2019).

Each new block starts as a copy of one of the parent's last blocks (the ``k``-th new
block copies block ``L - added + k``, cycling when more than ``L`` are added), so the new
blocks do not start identical (identical blocks on an identical input would get
identical gradients) and their attention already reads the features the parent made.
New blocks go after the parent's, so every parent block keeps its index: a ranking,
planted band or FG configuration of the parent names the same blocks in the child.
"""

from __future__ import annotations

from typing import Any

#: The linear layers whose zeroing makes a Wan block the identity (attribute paths).
RESIDUAL_OUTPUTS = ("attn1.to_out.0", "attn2.to_out.0", "ffn.net.2")


def deepen(transformer: Any, added: int) -> Any:
    """A ``WanTransformer3DModel`` with ``added`` more blocks that computes exactly what
    ``transformer`` computes (module docstring); ``transformer`` itself is left as it is."""
    import torch

    if added < 1:
        raise ValueError(f"added must be >= 1 block, got {added}")
    depth = transformer.config.num_layers
    grown = type(transformer).from_config({**transformer.config, "num_layers": depth + added})
    grown.to(transformer.device)  # float32, as training runs (load_state_dict casts the values)
    state = transformer.state_dict()
    for k in range(added):
        source = depth - added + k if added <= depth else k % depth
        prefix = f"blocks.{source}."
        state |= {
            f"blocks.{depth + k}.{name[len(prefix) :]}": value
            for name, value in state.items()
            if name.startswith(prefix)
        }
    grown.load_state_dict(state, strict=True)
    with torch.no_grad():
        for block in grown.blocks[depth:]:
            for path in RESIDUAL_OUTPUTS:
                linear = block.get_submodule(path)
                linear.weight.zero_()
                linear.bias.zero_()
    return grown
