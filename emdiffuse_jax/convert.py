"""Import of the published EMDiffuse PyTorch checkpoints (`<name>_Network.pth`, `<name>_Network_ema.pth`).

The reference state dict (section 2.7) holds the UNet under the prefix `denoise_fn.` plus six schedule
buffers, which are ignored. Files are read without PyTorch (`emdiffuse_jax.torch_checkpoint`).
Every parameter of our network maps to exactly one reference key; anything missing, unexpected or
mis-shaped is an error that names the key.
"""

import os
import re
from typing import Any

import jax
import numpy as np

from emdiffuse_jax.models import abstract_params, unet_config
from emdiffuse_jax.models.config import UNetConfig
from emdiffuse_jax.torch_checkpoint import read_torch_state_dict

PREFIX = "denoise_fn."
SCHEDULE_BUFFERS = ("gammas", "sqrt_recip_gammas", "sqrt_recipm1_gammas", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")

# Our submodule names -> the reference's Sequential positions.
_LAYER_NAMES = {
    "in_norm": "in_layers.0", "in_conv": "in_layers.2", "emb_dense": "emb_layers.1",
    "out_norm": "out_layers.0", "out_conv": "out_layers.3", "skip": "skip_connection",
    "norm": "norm", "qkv": "qkv", "proj_out": "proj_out", "dense_0": "0", "dense_2": "2",
}
_TOP_NAMES = {"out_norm": "out.0", "out_conv": "out.2", "cond_embed": "cond_embed",
              "channel_embed": "channel_embed"}
_BLOCK = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)$|^(middle_block)_(\d+)$")


def torch_key(path: tuple[str, ...]) -> str:
    """The reference state-dict key of one of our parameters, e.g.
    ('input_blocks_3_1', 'qkv', 'kernel') -> 'denoise_fn.input_blocks.3.1.qkv.weight'."""
    *modules, leaf = path
    top, *inner = modules
    match = _BLOCK.match(top)
    if match:
        top = ".".join(g for g in match.groups() if g is not None)
    else:
        top = _TOP_NAMES[top]
    parts = [top] + [_LAYER_NAMES[name] for name in inner]
    return PREFIX + ".".join(parts + ["bias" if leaf == "bias" else "weight"])


def _to_flax(value: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """Reorder a reference tensor to our layout: conv (O,I,kh,kw) -> (kh,kw,I,O), linear and conv1d -> (I,O)."""
    if value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 3:  # Conv1d (O, I, 1) used as a dense layer
        value = value[:, :, 0].T
    elif value.ndim == 2:
        value = value.T
    if value.shape != tuple(target_shape):
        raise ValueError(f"shape {value.shape} != expected {tuple(target_shape)}")
    return np.ascontiguousarray(value, dtype=np.float32)


def _expected_torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if len(flax_shape) == 2:
        return (flax_shape[1], flax_shape[0])
    return tuple(flax_shape)


def _infer_config(unet: Any, state: dict) -> UNetConfig:
    values = dict(unet.to_dict() if hasattr(unet, "to_dict") else (unet or {}))
    has_slice_embedding = any(k.startswith(PREFIX + "channel_embed.") for k in state)
    values.setdefault("vem", has_slice_embedding)
    stem = state.get(PREFIX + "input_blocks.0.0.weight")
    if stem is not None:
        values.setdefault("in_channel", int(stem.shape[1]))
    return unet_config(values)


def load_torch_checkpoint(path: str | os.PathLike, unet: Any = None) -> dict:
    """Parameters for the network `unet` describes, read from a reference `.pth` checkpoint.

    `unet` holds the reference hyper-parameter names (dict, ConfigDict or UNetConfig); `vem` and
    `in_channel` are inferred from the file when not given.
    """
    path = os.fspath(path)
    state = read_torch_state_dict(path)
    cfg = _infer_config(unet, state)
    network_keys = {k for k in state if k not in SCHEDULE_BUFFERS}
    kind = "vEMDiffuse (vem=True)" if cfg.vem else "2D EMDiffuse (vem=False)"
    file_kind = ("vEMDiffuse" if any(k.startswith(PREFIX + "channel_embed.") for k in state)
                 else "2D EMDiffuse")
    hint = (f"{path} looks like a {file_kind} checkpoint; the network requested is {kind} with "
            f"inner_channel={cfg.inner_channel}, channel_mults={list(cfg.channel_mults)}, "
            f"res_blocks={cfg.res_blocks}, attn_res={list(cfg.attn_res)}, in_channel={cfg.in_channel}. "
            "Use the UNet settings the checkpoint was trained with.")

    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))
    keys = [torch_key(tuple(entry.key for entry in key_path)) for key_path, _ in leaves]
    missing = [(key, leaf) for key, (_, leaf) in zip(keys, leaves) if key not in state]
    if missing:
        key, leaf = missing[0]
        raise ValueError(f"checkpoint {path} is missing {len(missing)} keys, e.g. {key!r} (expected shape "
                         f"{_expected_torch_shape(leaf.shape)}). {hint}")
    unexpected = sorted(network_keys - set(keys))
    if unexpected:
        raise ValueError(f"checkpoint {path} has {len(unexpected)} unexpected keys, e.g. {unexpected[:3]}. {hint}")
    converted = []
    for key, (_, leaf) in zip(keys, leaves):
        try:
            converted.append(_to_flax(np.asarray(state[key]), leaf.shape))
        except ValueError:
            raise ValueError(f"checkpoint {path}: key {key!r} has shape {tuple(state[key].shape)}, the network "
                             f"expects {_expected_torch_shape(leaf.shape)}. {hint}") from None
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(v) for v in converted])
