"""Probe kinds: one file each, registered in :data:`layerscope.registry.PROBES`.

A kind says which tensors of a block's call it needs captured (:class:`ProbeKind`'s
``needs_*`` flags) and how it turns them into (K, F', H', W') maps.  The hooks that
capture them live in :mod:`layerscope.probes`, shared by every kind.  Adding a kind is
one new module with a :class:`ProbeKind` instance plus one line in the registry (or an
entry point in group ``layerscope.probes`` from another package).
"""

from layerscope.probe_kinds.base import ProbeKind

__all__ = ["ProbeKind"]
