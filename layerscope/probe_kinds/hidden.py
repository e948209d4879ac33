"""``hidden``: cos(V_k, z(u, v)), the paper's Eq. 10 literally.

V_k is the keyword's value vector from the text value projection (Wan ``attn2.to_v``), z
the hidden state entering the cross-attention.
"""

from __future__ import annotations

from layerscope.probe_kinds.base import ProbeKind


class HiddenProbe(ProbeKind):
    name = "hidden"
    summary = "Eq. 10: cos of the keyword's value vector and the visual hidden state (default)"
    needs_text_values = True

    def maps(self, probe, scratch, grid):
        from layerscope.probes import cosine_maps

        return cosine_maps(scratch["visual"], scratch["keyword_values"], grid)


HIDDEN = HiddenProbe()
