"""UNet hyper-parameters under the reference implementation's names, so a reference config maps one to one."""

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The EMDiffuse UNet (reference section 2). Defaults are the published full-size 2D network.

    `vem` selects the vEMDiffuse network, which also embeds the index of the intermediate slice to generate.
    `zero_init` zero-initialises the output convolutions (guided-diffusion style); the reference overwrites
    that with Kaiming-normal before training, so it is off by default.
    """

    in_channel: int = 2
    out_channel: int = 1
    inner_channel: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4, 8)
    attn_res: tuple[int, ...] = (16,)
    num_head_channels: int = 32
    res_blocks: int = 2
    dropout: float = 0.2
    image_size: int = 256
    vem: bool = False
    zero_init: bool = False

    def __post_init__(self):
        if self.in_channel < 1 or self.out_channel < 1 or self.inner_channel < 1:
            raise ValueError(f"channel counts must be positive, got {self}")
        widths = [self.inner_channel * m for m in self.channel_mults]
        for width in widths:
            if width % self.norm_groups:
                raise ValueError(
                    f"width {width} is not divisible by {self.norm_groups} GroupNorm groups; "
                    "choose inner_channel / channel_mults accordingly")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def norm_groups(self) -> int:
        """GroupNorm groups: 32, or 16 when inner_channel is 16 (as the reference)."""
        return 16 if self.inner_channel == 16 else 32

    @property
    def emb_channels(self) -> int:
        return 4 * self.inner_channel

    @property
    def downsampling(self) -> int:
        """Total down-sampling factor: H and W must be multiples of it."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def attention_levels(self) -> tuple[int, ...]:
        """Down-sampling factors at which encoder/decoder attention really applies.

        The reference lists `attn_res=[16]` but never reaches factor 16, so its full-size network has attention
        in the middle block only (reference 2.4); we reproduce that and make it visible here.
        """
        reachable = {2 ** level for level in range(len(self.channel_mults))}
        return tuple(sorted(set(self.attn_res) & reachable))


_FIELDS = {f.name for f in dataclasses.fields(UNetConfig)}


def unet_config(unet: Any) -> UNetConfig:
    """A UNetConfig from a UNetConfig, a dict or an ml_collections ConfigDict with the reference names."""
    if isinstance(unet, UNetConfig):
        return unet
    if hasattr(unet, "to_dict"):
        unet = unet.to_dict()
    if not isinstance(unet, Mapping):
        raise TypeError(f"expected a UNet config (dict, ConfigDict or UNetConfig), got {type(unet).__name__}")
    unknown = set(unet) - _FIELDS
    if unknown:
        raise ValueError(f"unknown UNet config keys {sorted(unknown)}; known: {sorted(_FIELDS)}")
    values = dict(unet)
    for name in ("channel_mults", "attn_res"):
        if name in values:
            values[name] = tuple(int(v) for v in values[name])
    return UNetConfig(**values)
