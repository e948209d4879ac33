"""What every probe kind declares: the tensors it needs and how they become maps."""

from __future__ import annotations

from typing import Any


class ProbeKind:
    """One kind of keyword map; subclasses set the flags and implement :meth:`maps`."""

    name: str = ""
    #: one line for ``--probe``'s documentation
    summary: str = ""
    #: the keyword's value vectors (the site's ``text_value`` output, keyword rows averaged)
    needs_text_values: bool = False
    #: also the mean value vector of the prompt's non-keyword rows (``reference_tokens``)
    needs_reference_value: bool = False
    #: the attention output before its output projection
    needs_attention_output: bool = False
    #: queries and keys after their norms (softmax attention mass)
    needs_query_key: bool = False
    #: the attention call itself (args, kwargs), to run it again
    needs_call: bool = False

    def check_config(self, config: Any) -> None:
        """Refuse a :class:`~layerscope.probes.ProbeConfig` this kind cannot record (``ValueError``)."""

    def check_site(self, site: Any) -> None:
        """Refuse a block this kind cannot probe (``ValueError``)."""

    def after_attention(self, probe: Any, output: Any) -> None:
        """Called with the attention's output while its inputs are still in ``probe.scratch``."""

    def maps(self, probe: Any, scratch: dict[str, Any], grid: tuple[int, int, int]) -> Any:
        """The (K, F', H', W') float32 maps of one call from the captured ``scratch`` tensors."""
        raise NotImplementedError
