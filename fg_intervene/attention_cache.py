"""Attention Cache (paper §4.2, Eq. 10-13): strong layers' maps guide the weak layers.

The maps A_l,k (Eq. 10) come from LayerScope's own ``hidden`` probe
(:func:`layerscope.probes.cosine_maps`): one implementation for observing and for
intervening.  The cache keeps exactly one (K, F', H', W') map per strong layer, the
latest, so its memory never grows with the number of steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def aggregation_weights(num_layers: int, weak_layers: Sequence[int], available: Sequence[int]) -> torch.Tensor:
    """Eq. 11's alpha (L,): 0 on weak layers, 1/(number of strong maps available) on the rest.

    With every strong layer available this is the paper's 1/(L - m).  On the first
    step only the strong layers before the weak band have run; averaging over those
    keeps the cache on the same scale instead of shrinking it.
    """
    weak = set(weak_layers)
    usable = [layer for layer in available if layer not in weak and 0 <= layer < num_layers]
    alpha = torch.zeros(num_layers, dtype=torch.float64)
    if usable:
        alpha[usable] = 1.0 / len(usable)
    return alpha


def aggregate(maps: dict[int, torch.Tensor], alpha: torch.Tensor) -> torch.Tensor | None:
    """Eq. 11: A_cache = sum_l alpha_l A_l over the layers with a map and nonzero alpha."""
    total = None
    for layer, layer_map in maps.items():
        weight = float(alpha[layer])
        if weight == 0.0:
            continue
        term = weight * layer_map.float()
        total = term if total is None else total + term
    return total


def threshold(cache: torch.Tensor, tau_cache: float) -> torch.Tensor:
    """Eq. 12: keep only positions above tau_cache, zero elsewhere."""
    return torch.where(cache > tau_cache, cache, torch.zeros_like(cache))


def inject(hidden: torch.Tensor, cache: torch.Tensor, visual_values: torch.Tensor, lambda_cache: float) -> torch.Tensor:
    """Eq. 13: z(u, v) += lambda_cache * sum_k A_cache,k(u, v) * V_k^vis at every visual token.

    ``hidden`` (B, N, D) with N = F'H'W' in (frame, y, x) order; ``cache`` (K, F', H', W').
    """
    k = cache.shape[0]
    visual_values = visual_values.to(hidden.device)
    per_token = cache.reshape(k, -1).T.to(visual_values) @ visual_values  # (N, D)
    return hidden + (lambda_cache * per_token).to(hidden.dtype)


class AttentionCache:
    """The latest map of each strong layer per branch, and which step it came from.

    Branches are kept apart: with guidance on both, the uncond pass must not overwrite
    the cond maps a cond weak layer reads.
    """

    def __init__(self, num_layers: int, weak_layers: Sequence[int]):
        self.num_layers = num_layers
        self.weak_layers = sorted(weak_layers)
        self.strong_layers = [layer for layer in range(num_layers) if layer not in set(weak_layers)]
        self._maps: dict[str, dict[int, torch.Tensor]] = {}
        self._steps: dict[str, dict[int, int]] = {}

    def update(self, step: int, layer: int, branch: str, maps: torch.Tensor) -> None:
        """A probe sink: remember ``maps`` as ``layer``'s latest on ``branch`` (replacing the older one)."""
        if layer in self.weak_layers:
            return
        self._maps.setdefault(branch, {})[layer] = maps
        self._steps.setdefault(branch, {})[layer] = step

    def sources(self, branch: str = "cond") -> dict[int, int]:
        """layer -> step of the map the next weak layer of ``branch`` will use (the ordering policy)."""
        return dict(sorted(self._steps.get(branch, {}).items()))

    def current(self, tau_cache: float, branch: str = "cond") -> torch.Tensor | None:
        """Thresholded aggregate of the latest maps of ``branch``, or None before any strong layer ran."""
        maps = self._maps.get(branch, {})
        alpha = aggregation_weights(self.num_layers, self.weak_layers, list(maps))
        cache = aggregate(maps, alpha)
        return None if cache is None else threshold(cache, tau_cache)

    def stored_maps(self) -> int:
        return sum(len(m) for m in self._maps.values())

    def clear(self) -> None:
        self._maps.clear()
        self._steps.clear()
