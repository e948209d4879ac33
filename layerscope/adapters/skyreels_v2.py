"""SkyReels-V2 image-to-video adapter: Wan2.1-I2V's blocks under another name.

Why a subclass and nothing more: diffusers' ``transformer_skyreels_v2.py`` is
``transformer_wan.py`` with the classes renamed.  ``SkyReelsV2TransformerBlock`` runs
``attn2(norm2(z), [image context; 512 text rows], None, None)``; ``SkyReelsV2AttnProcessor``
splits the context at ``len - 512`` exactly as ``WanAttnProcessor`` does (text through
``to_k``/``norm_k``/``to_v``, image through ``add_k_proj``/``norm_added_k``/``add_v_proj``,
the two attention results summed before ``to_out[0]``), tokens are ordered
(frame, y, x), the text encoder is UMT5 padded to 512 and ``SkyReelsV2ImageToVideoPipeline``
wraps both branches in ``cache_context("cond"/"uncond")``.  So the map, the keyword rows and
every probe are Wan's (:mod:`layerscope.adapters.wan`).

Differences that do not reach the map: the I2V pipeline passes one timestep per sample
(diffusion forcing, a timestep per latent frame, belongs to the ``DiffusionForcing``
pipelines, which this adapter does not accept: their autoregressive chunks call the
transformer several times per step), ``num_frame_per_block > 1`` only masks self-attention
(``attn1``), the scheduler is UniPC, the image encoder is ``CLIPVisionModelWithProjection``
(its penultimate hidden states, as in Wan) and the VAE strides come from
``vae.temperal_downsample`` (the pipeline's ``vae_scale_factor_*``, which the Wan adapter reads).
"""

from __future__ import annotations

from layerscope.adapters.wan import WanAdapter


class SkyReelsV2Adapter(WanAdapter):
    """``SkyReelsV2ImageToVideoPipeline`` (SkyReels-V2-I2V 1.3B/14B, 540P/720P)."""

    name = "skyreels-v2"
    pipeline_classes = ("SkyReelsV2ImageToVideoPipeline",)
