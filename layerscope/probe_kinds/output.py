"""``output``: cos(V_k, O(u, v)) with O the attention output before ``to_out``."""

from __future__ import annotations

from layerscope.probe_kinds.base import ProbeKind


class OutputProbe(ProbeKind):
    name = "output"
    summary = "cos of the keyword's value vector and the attention output"
    needs_text_values = True
    needs_attention_output = True

    def maps(self, probe, scratch, grid):
        from layerscope.probes import cosine_maps

        return cosine_maps(scratch["attention_output"], scratch["keyword_values"], grid)


OUTPUT = OutputProbe()
