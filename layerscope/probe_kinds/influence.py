"""``influence``: causal text influence, |O(u) - O'_k(u)| per visual token.

At the same hidden state and timestep the block's cross-attention is run again with the
keyword's text rows replaced by a neutral row (the text encoder's padding row); the map
is ``|O(u) - O'(u)|`` divided by the mean ``|O(u)|`` of that call, so layers of different
output scale compare.  Zero exactly where the output does not depend on the keyword.  One
extra cross-attention call per keyword, layer and recorded step (not a whole forward);
only blocks whose adapter can rebuild the call (cross-attention DiTs).
"""

from __future__ import annotations

import torch

from layerscope.probe_kinds.base import ProbeKind


class InfluenceProbe(ProbeKind):
    name = "influence"
    summary = "output change when the keyword's text rows are replaced by a neutral row"
    needs_call = True

    def check_config(self, config):
        if config.neutral_token is None:
            raise ValueError("the influence probe needs a neutral text row (neutral_token)")

    def check_site(self, site):
        if site.replace_text_rows is None:
            raise ValueError(f"{site.name}: the influence probe cannot rebuild this block's attention call")

    def after_attention(self, probe, output):
        """Re-run the attention module's ``forward`` (its hooks do not fire again) per keyword.

        The probe's own hooks are switched off meanwhile (``probe.rerunning``), so nothing
        is recorded twice.
        """
        if "call" not in probe.scratch:
            return
        args, kwargs = probe.scratch["call"]
        reference = (output[0] if isinstance(output, tuple) else output)[probe.row].float()  # (N, D)
        scale = reference.norm(dim=-1).mean().clamp_min(torch.finfo(torch.float32).tiny)
        maps = []
        probe.rerunning = True
        try:
            with torch.no_grad():
                for tokens in probe.config.keyword_tokens:
                    new_args, new_kwargs = probe.site.replace_text_rows(
                        args, kwargs, tokens, probe.config.neutral_token
                    )
                    changed = probe.site.attention.forward(*new_args, **new_kwargs)
                    changed = (changed[0] if isinstance(changed, tuple) else changed)[probe.row].float()
                    maps.append((reference - changed).norm(dim=-1) / scale)
        finally:
            probe.rerunning = False
        probe.scratch["influence"] = torch.stack(maps).reshape(len(maps), *probe.config.grid)

    def maps(self, probe, scratch, grid):
        return scratch["influence"]


INFLUENCE = InfluenceProbe()
