"""The EMDiffuse UNet (reference section 2): guided-diffusion layout conditioned on the continuous noise level.

Input x is NHWC: [condition channels..., noisy target]. The 2D network serves EMDiffuse-n/-r; with `vem`
the vEMDiffuse network also embeds the index of the intermediate slice to generate and concatenates that
embedding to the noise-level embedding (reference 2.6).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emdiffuse_jax.models.config import UNetConfig
from emdiffuse_jax.models.layers import (AttentionBlock, Conv2D, EmbedMLP, ResBlock, group_norm,
                                         sinusoidal_embedding)


class UNet(nn.Module):
    config: UNetConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, gamma, slice_index=None, *, train: bool = False):
        cfg = self.config
        self._check_inputs(x, gamma, slice_index)
        dt = self.dtype
        groups = cfg.norm_groups
        attention_levels = cfg.attention_levels

        emb = EmbedMLP(cfg.emb_channels, name="cond_embed")(
            sinusoidal_embedding(gamma, cfg.inner_channel))
        if cfg.vem:
            slice_emb = EmbedMLP(cfg.emb_channels, name="channel_embed")(
                sinusoidal_embedding(slice_index, cfg.inner_channel))
            emb = jnp.concatenate([emb, slice_emb], axis=-1)

        def res_block(name, out_channels, resample=None):
            return ResBlock(out_channels, groups, cfg.dropout, resample, cfg.zero_init, dt, name=name)

        def attention(name):
            return AttentionBlock(cfg.num_head_channels, groups, cfg.zero_init, dt, name=name)

        # Encoder: every block's output is kept for the decoder's skip connections.
        h = Conv2D(cfg.inner_channel * cfg.channel_mults[0], dtype=dt, name="input_blocks_0_0")(x)
        skips = [h]
        block, ds = 1, 1
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.res_blocks):
                h = res_block(f"input_blocks_{block}_0", cfg.inner_channel * mult)(h, emb, train)
                if ds in attention_levels:
                    h = attention(f"input_blocks_{block}_1")(h)
                skips.append(h)
                block += 1
            if level != len(cfg.channel_mults) - 1:
                h = res_block(f"input_blocks_{block}_0", h.shape[-1], "down")(h, emb, train)
                skips.append(h)
                block, ds = block + 1, ds * 2

        h = res_block("middle_block_0", h.shape[-1])(h, emb, train)
        h = attention("middle_block_1")(h)
        h = res_block("middle_block_2", h.shape[-1])(h, emb, train)

        # Decoder: concatenate [h, skip] and apply res_blocks + 1 blocks per level, up-sampling at level ends.
        block = 0
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for i in range(cfg.res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res_block(f"output_blocks_{block}_0", cfg.inner_channel * mult)(h, emb, train)
                position = 1
                if ds in attention_levels:
                    h = attention(f"output_blocks_{block}_{position}")(h)
                    position += 1
                if level and i == cfg.res_blocks:
                    h = res_block(f"output_blocks_{block}_{position}", h.shape[-1], "up")(h, emb, train)
                    ds //= 2
                block += 1

        h = nn.silu(group_norm(h, groups, "out_norm", dt))
        out = Conv2D(cfg.out_channel, zero_init=cfg.zero_init, dtype=dt, name="out_conv")(h)
        return out.astype(jnp.float32)

    def _check_inputs(self, x, gamma, slice_index):
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.in_channel:
            raise ValueError(f"expected x of shape (B, H, W, {cfg.in_channel}) (NHWC: condition channels then "
                             f"the noisy target), got {x.shape}")
        factor = cfg.downsampling
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"height and width must be multiples of {factor} for this network, got "
                             f"{x.shape[1]} x {x.shape[2]}; pad or crop the input")
        if jnp.size(gamma) != x.shape[0]:
            raise ValueError(f"expected one noise level per sample ({x.shape[0]}), got shape {jnp.shape(gamma)}")
        if cfg.vem and slice_index is None:
            raise ValueError("the vEM network needs slice_index (B,), the index of the intermediate slice")
        if not cfg.vem and slice_index is not None:
            raise ValueError("slice_index is only used by the vEM network (vem=True)")
        if slice_index is not None and jnp.size(slice_index) != x.shape[0]:
            raise ValueError(f"expected one slice index per sample ({x.shape[0]}), got {jnp.shape(slice_index)}")
