"""``contrastive``: cos(V_k, z) - cos(V_ref, z), V_ref the mean value of the prompt's non-keyword words.

Why that reference: it removes what every token of the prompt shares (the value bias and
the common direction), which in a layer whose cross-attention ignores the text is
everything, so the map is zero there (exactly, up to float rounding of the two means);
what is left is what the keyword adds over the rest of its own prompt.  A padding
("null") token would be the alternative; it is a row the model hardly reads, and its
value differs from the prompt's by the prompt's whole content, not by the keyword's.
"""

from __future__ import annotations

from layerscope.probe_kinds.base import ProbeKind


class ContrastiveProbe(ProbeKind):
    name = "contrastive"
    summary = "Eq. 10 minus the same map of the prompt's other words (0 where the text is ignored)"
    needs_text_values = True
    needs_reference_value = True

    def check_config(self, config):
        if not config.reference_tokens:
            raise ValueError("the contrastive probe needs the prompt's non-keyword tokens (reference_tokens)")

    def maps(self, probe, scratch, grid):
        from layerscope.probes import cosine_maps

        visual = scratch["visual"]
        return cosine_maps(visual, scratch["keyword_values"], grid) - cosine_maps(
            visual, scratch["reference_value"], grid
        )


CONTRASTIVE = ContrastiveProbe()
