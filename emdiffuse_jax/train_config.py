"""The training configuration schema, filled with the reference hyper-parameters shared by all tasks.

``configs/<model>.py`` start from ``base_config(task)`` and set what differs per model (reference section
1.3) and the ``tiny`` variant. Every field exists here, so ``lock_config`` turns a mistyped override
(``--config.optim.learnig_rate=...``) into an error instead of a silently ignored value.
"""

from __future__ import annotations

import ml_collections

TASKS = ("denoise", "superres", "vem_i", "vem_a")
VEM_TASKS = ("vem_i", "vem_a")


def base_config(task: str) -> ml_collections.ConfigDict:
    """Reference EMDiffuse settings (section 1.2) for ``task``; paths empty = built-in phantoms."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    vem = task in VEM_TASKS
    c = ml_collections.ConfigDict()
    c.task = task
    c.objective = "diffusion"     # or "regression": the CARE-like baseline (see apply_regression)
    c.parametrization = "direct"  # or "residual": diffuse (target - simple estimate) / 2 (diffusion.objectives)
    c.seed = 0

    c.model = ml_collections.ConfigDict(dict(
        in_channel=3 if vem else 2, out_channel=1, inner_channel=32, channel_mults=(1, 2, 4, 8),
        attn_res=(16,), num_head_channels=32, res_blocks=2, dropout=0.2, image_size=256, vem=vem,
        zero_init=False))

    c.data = ml_collections.ConfigDict(dict(
        input_path="",        # "" = built-in synthetic phantoms
        target_path="",       # paired targets (denoise / superres); "" = derived by the data pipeline
        patch_size=256,
        z_factor=6 if vem else 0,   # vEM: slices generated between two inputs = z_factor - 1
        val_fraction=0.1,     # held out by whole images / a strip / a slab of the volume (data pipeline)
        val_batch_size=4,     # validation patches scored at each validation (identical on every process)
        normalization="",     # "" = uint8 mapping for 8-bit data, else percentile; or uint8|minmax|percentile
        degrade="",           # clean images only: how inputs are made (see data.degrade); "" = default
    ))

    c.diffusion = ml_collections.ConfigDict(dict(
        train_schedule=dict(kind="linear", n_timestep=2000, linear_start=1e-6, linear_end=0.01),
        test_schedule=dict(kind="linear", n_timestep=1000, linear_start=1e-4, linear_end=0.09),
    ))

    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=5e-5, warmup_steps=1000, grad_clip_norm=0.0, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0))
    c.ema_decay = 0.9999          # with a warm-up: min(ema_decay, (1 + s) / (10 + s)) at step s
    c.compute_dtype = "float32"   # "bfloat16": bf16 activations/weights in the step, float32 master params

    c.batch_size = 16             # global batch over all devices and processes
    c.num_steps = 200_000
    c.log_every = 100

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=2000, keep=3, keep_best=1, best_metric="psnr", best_mode="max"))

    c.eval = ml_collections.ConfigDict(dict(
        every_steps=10_000,       # 0 disables validation
        sample_steps=200,         # test-schedule steps of the validation sampler (notebooks use 200)
        num_samples=2,            # samples per image: mean is scored, their std is shown
        num_images=2,             # validation images written to TensorBoard
        weights="ema",            # ema | online: the weights validation scores and the best checkpoint ranks
        compare_weights=False,    # also score the other weights and log them as val_<other>_<metric>
    ))

    # data x fsdp devices (-1 = the rest); dcn_data > 1 splits data over slices / hosts (parallel.make_mesh)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2 ** 16, dcn_data=1))
    c.distributed = "auto"        # jax.distributed.initialize: auto | always | never
    c.init_from = ""              # transfer learning: a trained workdir / checkpoint step dir / reference .pth
    return c


def apply_tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A network and schedule small enough to train on a 2-core CPU in minutes (smoke runs, tests)."""
    c.model.inner_channel = 16
    c.model.channel_mults = (1, 2)
    c.model.res_blocks = 1
    c.model.num_head_channels = 16
    c.model.dropout = 0.0
    c.model.image_size = 32
    c.data.patch_size = 32
    c.data.val_batch_size = 2
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 10
    c.ema_decay = 0.99
    c.batch_size = 8
    c.num_steps = 200
    c.log_every = 10
    c.checkpoint.every_steps = 50
    c.eval.every_steps = 100
    c.eval.sample_steps = 10
    c.eval.compare_weights = True   # cheap at this size: log EMA and online validation side by side
    return c


def apply_regression(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The regression baseline of a model config: the same UNet without the noisy-target input channel,
    trained to map the condition to the target (L1). Equal data and optimiser; validation scores its
    single deterministic prediction."""
    c.objective = "regression"
    c.model.in_channel -= 1
    c.eval.num_samples = 1
    return c


def apply_small(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Between tiny and full: learns real EM structure on a 2-core CPU in 30-60 minutes (about 1.3 M / 1.6 M
    parameters, 64 px patches); the size of the models shipped under models/ (float32, < 10 MB)."""
    c.model.inner_channel = 32
    c.model.channel_mults = (1, 2, 2)
    c.model.res_blocks = 1
    c.model.attn_res = ()          # self-attention in the middle block only, as the full network
    c.model.num_head_channels = 32
    c.model.dropout = 0.0
    c.model.image_size = 64
    c.data.patch_size = 64
    c.data.val_batch_size = 4
    c.optim.learning_rate = 2e-4
    c.optim.warmup_steps = 100
    c.ema_decay = 0.995            # an averaging window of ~200 steps fits a run of a few thousand
    c.batch_size = 8
    c.num_steps = 3000
    c.log_every = 25
    c.checkpoint.every_steps = 100
    c.eval.every_steps = 500
    c.eval.sample_steps = 20
    return c


VARIANTS = {"": None, "tiny": apply_tiny, "small": apply_small}


def parse_variant(arg: str | None) -> str:
    """The variant named after ':' on the command line (``configs/x.py:tiny``); '' for the full model."""
    arg = (arg or "").strip()
    arg = "" if arg == "full" else arg
    if arg not in VARIANTS:
        raise ValueError(f"unknown config variant {arg!r}; use 'tiny', 'small' or nothing (the full model)")
    return arg


def apply_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the variant named by the config argument (see parse_variant) to a full config."""
    apply = VARIANTS[parse_variant(arg)]
    return c if apply is None else apply(c)
