"""One error family for everything a user can get wrong.

Every usage error LayerScope raises is a :class:`LayerScopeError`, so callers (and the
CLI, which turns it into one line on stderr and exit code 2) catch one class instead of
importing a dozen modules.  It subclasses :class:`ValueError`, as diffusers' own usage
errors are plain ``ValueError``s: code that already catches those keeps working.

The subclasses stay next to the code that raises them (``StoreError`` in
:mod:`layerscope.store`, ...); they exist so tests and callers can be specific, not
because the CLI treats them differently.
"""

from __future__ import annotations


class LayerScopeError(ValueError):
    """Base of every usage error: the message names the problem and the fix."""


class UsageError(LayerScopeError):
    """Command-line options that contradict each other or the data they point at."""
