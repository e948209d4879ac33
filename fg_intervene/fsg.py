"""Fine-grained Semantic Guidance, the model-independent math (paper §4.1, Eq. 6-9).

Everything here is a small function on tensors so each equation can be checked against
hand-computed values; :mod:`fg_intervene.wan` wires them into a Wan transformer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from layerscope.interventions import InterventionError

_WORD_END = "</w>"


class SelectionError(InterventionError):
    """Automatic keyword selection found nothing usable (a usage error)."""


def similarity_matrix(text_features: torch.Tensor, patch_features: torch.Tensor, sign: int = -1) -> torch.Tensor:
    """Eq. 6: S_mn = sign * cos(t_m, v_n) for text tokens (M, E) and patches (N, E) -> (M, N).

    The paper prints sign = -1 (the default here); see ``FocalGuidanceConfig.selection_sign``
    for when +1 is the better choice and how a model folder declares it.
    """
    return sign * (F.normalize(text_features.float(), dim=-1) @ F.normalize(patch_features.float(), dim=-1).T)


def group_words(pieces: list[str]) -> list[tuple[str, list[int]]]:
    """Group CLIP BPE pieces into words: ``["re", "d</w>"]`` -> ``[("red", [0, 1])]``."""
    words: list[tuple[str, list[int]]] = []
    current, indices = "", []
    for index, piece in enumerate(pieces):
        current += piece.removesuffix(_WORD_END)
        indices.append(index)
        if piece.endswith(_WORD_END):
            words.append((current, indices))
            current, indices = "", []
    if indices:
        words.append((current, indices))
    return words


@dataclass(frozen=True)
class KeywordScore:
    word: str
    score: float  # max over the word's tokens and all patches of S
    selected: bool
    stopword: bool = False


def score_words(
    similarity: torch.Tensor, words: list[tuple[str, list[int]]], tau_sel: float, stopwords: list[str]
) -> list[KeywordScore]:
    """Eq. 6's selection rule per word: keep it if max_n S_mn > tau_sel (stopwords never)."""
    scores = []
    stop = {s.lower() for s in stopwords}
    for word, indices in words:
        clean = "".join(ch for ch in word.lower() if ch.isalnum() or ch in "-'")
        if not clean:
            continue
        best = float(similarity[indices].max())
        scores.append(KeywordScore(clean, best, best > tau_sel and clean not in stop, clean in stop))
    return scores


def select_keywords(scores: list[KeywordScore], tau_sel: float) -> list[str]:
    """The selected words in prompt order, each once; fail with the best score if none."""
    chosen = list(dict.fromkeys(s.word for s in scores if s.selected))
    if not chosen:
        # the best word that could have been chosen: a stopword above tau_sel is no help
        eligible = [s for s in scores if not s.stopword] or scores
        best = max(eligible, key=lambda s: s.score, default=None)
        detail = f"the best was {best.word!r} at {best.score:.3f}" if best else "the prompt has no words"
        raise SelectionError(
            f"automatic keyword selection found no word with max similarity above tau_sel={tau_sel}; "
            f"{detail}; lower tau_sel or name keywords explicitly"
        )
    return chosen


def keyword_similarity(similarity: torch.Tensor, words: list[tuple[str, list[int]]], keyword: str) -> torch.Tensor:
    """S_k (N,): the mean over the keyword's CLIP tokens (every word of a multi-word keyword)."""
    targets = keyword.lower().split()
    rows: list[int] = []
    for word, indices in words:
        if word.lower().strip(".,;:!?") in targets:
            rows.extend(indices)
    if not rows:
        raise SelectionError(f"keyword {keyword!r} has no CLIP tokens in the prompt")
    return similarity[rows].mean(0)


def anchor_weights(keyword_sim: torch.Tensor) -> torch.Tensor:
    """Weights of Eq. 6's anchor sum, normalised: w_n = max(S_kn, 0) / sum_n max(S_kn, 0).

    The paper weights visual tokens by S_kn directly; with raw cosines the anchor's size
    grows with the number of patches N (257 for Wan, 64 here) and negative cosines pull
    it away from the region.  Normalising keeps lambda comparable across models.
    If no patch is positive, all patches weigh equally.
    """
    positive = keyword_sim.clamp(min=0)
    total = positive.sum(-1, keepdim=True)
    uniform = torch.full_like(positive, 1.0 / positive.shape[-1])
    return torch.where(total > 0, positive / total.clamp(min=torch.finfo(positive.dtype).tiny), uniform)


def visual_anchors(keyword_sims: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """v_anchor,k = sum_n w_kn v_n for keyword similarities (K, N) and image tokens (N, D)."""
    return anchor_weights(keyword_sims) @ image_tokens.float()


def centre_crop_window(latent_grid: tuple[int, int]) -> tuple[int, int, int, int]:
    """Latent cells (y0, y1, x0, x1) that CLIP's resize-short-side + centre-crop keeps.

    CLIP image processors (open_clip's and transformers' CLIPImageProcessor, as in Wan)
    see only the central square of a non-square frame; the CLIP patch grid maps there.
    """
    height, width = latent_grid
    side = min(height, width)
    y0, x0 = (height - side) // 2, (width - side) // 2
    return y0, y0 + side, x0, x0 + side


def region_weights(
    keyword_sims: torch.Tensor, patch_grid: tuple[int, int], latent_grid: tuple[int, int], tau_region: float
) -> torch.Tensor:
    """Eq. 9's w_k(u, v) on the latent grid, zero outside the region R_k.

    S_k is laid out on the CLIP patch grid, resized (bilinear) onto the latent cells of
    CLIP's centre crop (:func:`centre_crop_window`; zero outside it), min-max normalised
    to [0, 1]; R_k keeps the cells above ``tau_region``.
    """
    k = keyword_sims.shape[0]
    y0, y1, x0, x1 = centre_crop_window(latent_grid)
    maps = keyword_sims.float().reshape(k, 1, *patch_grid)
    resized = F.interpolate(maps, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[:, 0]
    low = resized.amin(dim=(-2, -1), keepdim=True)
    span = (resized.amax(dim=(-2, -1), keepdim=True) - low).clamp(min=1e-12)
    normalised = (resized - low) / span
    inside = torch.where(normalised > tau_region, normalised, torch.zeros_like(normalised))
    weights = keyword_sims.new_zeros((k, *latent_grid), dtype=torch.float32)
    weights[:, y0:y1, x0:x1] = inside
    return weights


def fuse_text_values(
    values: torch.Tensor, token_indices: list[list[int]], visual_values: torch.Tensor, lambda_txt: float
) -> torch.Tensor:
    """Eq. 8: V_k^text += lambda_txt * V_k^vis at each keyword's token positions.

    ``values`` (B, M, D) are the text value vectors of one layer; returns a new tensor,
    changed only at the keyword rows.
    """
    fused = values.clone()
    visual_values = visual_values.to(device=values.device, dtype=values.dtype)
    for k, indices in enumerate(token_indices):
        fused[:, indices] = fused[:, indices] + lambda_txt * visual_values[k]
    return fused


def inject_reference_frame(
    hidden: torch.Tensor, weights: torch.Tensor, visual_values: torch.Tensor, lambda_lat: float
) -> torch.Tensor:
    """Eq. 9: z_ref(u, v) += lambda_lat * w_k(u, v) * V_k^vis for the first latent frame.

    ``hidden`` (B, F'H'W', D) in (frame, y, x) token order; ``weights`` (K, H', W').
    Only the first H'W' tokens (the reference frame) change; summed over keywords.
    """
    k, height, width = weights.shape
    visual_values = visual_values.to(hidden.device)
    per_token = weights.reshape(k, height * width).T.to(visual_values) @ visual_values  # (H'W', D)
    out = hidden.clone()
    out[:, : height * width] = out[:, : height * width] + (lambda_lat * per_token).to(hidden.dtype)
    return out
