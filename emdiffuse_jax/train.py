"""``train_and_evaluate(config, workdir)``: the sharded training loop with validation and exact resume.

One run = one workdir holding ``config.json``, ``checkpoints/``, ``metrics.jsonl`` (logged steps) and
``tensorboard/`` (event files). Restarting with the same workdir resumes from its newest checkpoint and
reproduces the uninterrupted run step for step: the data batch and the random key of step s are pure
functions of (seed, s), and the whole state (including Adam's moments) is restored exactly.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from emdiffuse_jax import checkpointing, evaluation, models, parallel, summary
from emdiffuse_jax.data import intensity as intensity_lib
from emdiffuse_jax.data import io
from emdiffuse_jax.diffusion import objectives, schedules
from emdiffuse_jax.optim import make_optimizer
from emdiffuse_jax.train_config import TASKS, VEM_TASKS
from emdiffuse_jax.train_state import TrainState, create_train_state
from emdiffuse_jax.train_step import make_train_step

log = logging.getLogger(__name__)


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def check_config(config: ml_collections.ConfigDict) -> None:
    """Clear errors for settings that would otherwise fail deep inside JAX."""
    if config.task not in TASKS:
        raise ValueError(f"config.task {config.task!r} is not one of {TASKS}")
    if bool(config.model.vem) != (config.task in VEM_TASKS):
        raise ValueError(f"config.model.vem={config.model.vem} does not fit task {config.task!r}")
    if config.parametrization not in objectives.PARAMETRIZATIONS:
        raise ValueError(f"config.parametrization {config.parametrization!r} is not one of "
                         f"{objectives.PARAMETRIZATIONS}")
    if config.parametrization == "residual" and config.objective != "diffusion":
        raise ValueError("config.parametrization='residual' applies to objective 'diffusion' only")
    if config.objective not in objectives.OBJECTIVES:
        raise ValueError(f"config.objective {config.objective!r} is not one of {objectives.OBJECTIVES}")
    # condition channels (two slices for vEM, one image in 2D), plus the noisy target for diffusion
    want_in = (2 if config.task in VEM_TASKS else 1) + (config.objective == "diffusion")
    if config.model.in_channel != want_in:
        raise ValueError(f"task {config.task!r} with objective {config.objective!r} needs model.in_channel="
                         f"{want_in}, got {config.model.in_channel}")
    if config.task in VEM_TASKS and config.data.z_factor < 2:
        raise ValueError(f"vEM tasks need data.z_factor >= 2, got {config.data.z_factor}")
    down = 2 ** (len(config.model.channel_mults) - 1)
    if config.data.patch_size % down:
        raise ValueError(f"data.patch_size {config.data.patch_size} must be divisible by {down} "
                         f"(the UNet halves the image {len(config.model.channel_mults) - 1} times)")
    if config.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {config.compute_dtype!r}")
    positive = {"batch_size": config.batch_size, "num_steps": config.num_steps, "log_every": config.log_every,
                "data.patch_size": config.data.patch_size, "data.val_batch_size": config.data.val_batch_size,
                "checkpoint.every_steps": config.checkpoint.every_steps, "checkpoint.keep": config.checkpoint.keep,
                "eval.sample_steps": config.eval.sample_steps, "eval.num_samples": config.eval.num_samples,
                "optim.learning_rate": config.optim.learning_rate}
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"config.{name} must be > 0, got {value}")
    at_least_zero = {"eval.every_steps": config.eval.every_steps, "checkpoint.keep_best": config.checkpoint.keep_best,
                     "optim.warmup_steps": config.optim.warmup_steps, "optim.grad_clip_norm": config.optim.grad_clip_norm,
                     "eval.num_images": config.eval.num_images}
    for name, value in at_least_zero.items():
        if not value >= 0:
            raise ValueError(f"config.{name} must be >= 0, got {value}")
    if not 0 <= config.ema_decay < 1:
        raise ValueError(f"config.ema_decay must be in [0, 1), got {config.ema_decay}")
    if not 0 <= config.data.val_fraction < 1:
        raise ValueError(f"config.data.val_fraction must be in [0, 1), got {config.data.val_fraction}")
    checkpointing.check_weights(config.eval.weights)


def build_sources(config: ml_collections.ConfigDict, intensity: Any = None):
    """Train and held-out validation sources of the data pipeline; logs which data is used.

    intensity: the contract to map the data with (a resumed checkpoint's); None fits one on the training
    split. The validation source always uses the training source's contract.
    """
    from emdiffuse_jax.data.pipeline import build_train_source

    input_path = config.data.input_path or None
    target_path = config.data.target_path or None
    kwargs = dict(patch_size=config.data.patch_size,
                  z_factor=config.data.z_factor if config.task in VEM_TASKS else None,
                  val_fraction=config.data.val_fraction, normalization=config.data.normalization or None,
                  degrade=config.data.degrade or None)
    train = build_train_source(config.task, input_path, target_path, split="train", intensity=intensity, **kwargs)
    val = build_train_source(config.task, input_path, target_path, split="validation",
                             intensity=train.intensity, **kwargs)
    if input_path is None:
        log.info("training data: built-in synthetic phantoms (config.data.input_path is empty): %s", train)
    else:
        log.info("training data: %s", train)
    return train, val


def _check_params_fit(loaded: Any, abstract: Any, source: str) -> None:
    want = {jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_leaves_with_path(abstract)}
    got = {jax.tree_util.keystr(p): np.shape(a) for p, a in jax.tree_util.tree_leaves_with_path(loaded)}
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if bad:
        raise checkpointing.IncompatibleCheckpointError(
            f"init_from {source}: parameters do not fit the configured network ({len(bad)} differ, e.g. "
            f"{bad[0]}: {got.get(bad[0])} vs {want.get(bad[0])}); configure model.* like the source model")


class _PreemptionFlag:
    """SIGTERM sets a flag (single process): the loop then saves, waits and returns cleanly."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:   # not the main thread: rely on Orbax's multi-host preemption service
                self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _frozen(d: Any) -> tuple:
    """A hashable, order-independent copy of a (nested) config dict."""
    return tuple(sorted((k, _frozen(v) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v)
                        for k, v in d.items()))


class Programs(NamedTuple):
    """The jitted functions of one (network, optimizer, mesh) setting, compiled once per process."""
    tx: Any
    abstract: Any            # abstract TrainState
    shardings: Any           # TrainState of NamedShardings
    init: Any                # key -> TrainState
    from_params: Any         # params -> TrainState (transfer learning)
    train_step: Any          # (state, batch, key) -> (state, metrics)


@functools.lru_cache(maxsize=4)
def build_programs(unet: Any, optim: tuple, train_schedule: tuple, vem: bool, ema_decay: float,
                   compute_dtype: str, mesh: Any, fsdp_min_size: int, objective: str = "diffusion",
                   residual: bool = False) -> Programs:
    """Builds (and caches, so repeated runs in one process such as tests or notebooks reuse compilations)
    the optimizer, the state shardings and the jitted init and train-step functions."""
    tx = make_optimizer(**dict(optim))

    def init_state(key):
        return create_train_state(models.init_params(unet, key), tx)

    abstract = jax.eval_shape(init_state, jax.random.key(0))
    shardings = parallel.state_sharding(mesh, abstract, fsdp_min_size)
    gammas = schedules.make_schedule(**dict(train_schedule)).gammas
    apply_fn = models.make_apply_fn(unet, jnp.dtype(compute_dtype))
    step_fn = make_train_step(apply_fn, tx, gammas, vem=vem, ema_decay=ema_decay, objective=objective,
                              residual=residual)
    from_params = jax.jit(lambda p: create_train_state(p, tx), out_shardings=shardings)
    return Programs(tx=tx, abstract=abstract, shardings=shardings,
                    # init_params: not in a jit; computed on every host alike, each placing its own shards
                    init=lambda key: from_params(parallel.host_to_global(models.init_params(unet, key),
                                                                         shardings.params)),
                    from_params=from_params,
                    train_step=parallel.jit_train_step(step_fn, mesh, shardings))


def programs_for(config: ml_collections.ConfigDict, mesh: Any) -> Programs:
    """build_programs for a config (cached: equal settings share one compilation per process)."""
    return build_programs(models.unet_config(config.model.to_dict()), _frozen(config.optim.to_dict()),
                          _frozen(config.diffusion.train_schedule.to_dict()), config.task in VEM_TASKS,
                          float(config.ema_decay), config.compute_dtype, mesh, int(config.mesh.fsdp_min_size),
                          config.objective, config.parametrization == "residual")


def padded_rows(rows: int, mesh: Any) -> int:
    """The validation batch padded to a multiple of the mesh's devices (so that it splits over them)."""
    ndev = mesh.devices.size
    return -(-rows // ndev) * ndev


@functools.lru_cache(maxsize=4)
def build_validation(unet: Any, test_schedule: tuple, vem: bool, num_samples: int, compute_dtype: str,
                     mesh: Any, rows: int, objective: str = "diffusion", residual: bool = False) -> Any:
    """Jitted ``validate(ema_params, batch, key) -> (metrics, mean, std)`` (cached like build_programs).

    The batch holds ``padded_rows(rows, mesh)`` rows split over the mesh like a training batch; each device
    samples only its own rows (shard_map: the parameters are gathered once, no device repeats another's
    work). Row r is sampled with the key fold_in(key, r), so results do not depend on the mesh or the
    number of processes. Rows past ``rows`` repeat the last one and are left out of the metrics and the
    outputs (replicated: small, and read on process 0 for TensorBoard).
    """
    dtype = jnp.dtype(compute_dtype)
    if objective == "regression":
        sample = evaluation.make_regression_validation_fn(lambda p: models.make_denoise_fn(unet, p, dtype), vem=vem)
    else:
        sample = evaluation.make_validation_fn(
            lambda p: models.make_denoise_fn(unet, p, dtype), schedules.make_schedule(**dict(test_schedule)),
            vem=vem, num_samples=num_samples, residual=residual)
    per_device = padded_rows(rows, mesh) // mesh.devices.size

    def device_rows(params, batch, key):
        first = jax.lax.axis_index(parallel.DATA_AXES) * per_device
        keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(first + jnp.arange(per_device))

        def one_row(row, row_key):
            _, mean, std = sample(params, jax.tree.map(lambda x: x[None], row), row_key)
            return mean[0], std[0]

        return jax.vmap(one_row)(batch, keys)

    rows_spec = P(parallel.DATA_AXES)
    sharded = jax.shard_map(device_rows, mesh=mesh, in_specs=(P(), rows_spec, P()), out_specs=(rows_spec, rows_spec))

    def validate(params, batch, key):
        mean, std = sharded(params, batch, key)
        mean, std = mean[:rows], std[:rows]
        return evaluation.image_metrics(mean, batch["target"][:rows]), mean, std

    out = parallel.replicated(mesh)
    return jax.jit(validate, out_shardings=(out, out, out))


def _validation_batch(val_source: Any, config: ml_collections.ConfigDict, mesh: Any):
    """(host batch, global padded batch): the same few patches on every process (rows padded with the last
    one up to a multiple of the devices), each process placing only its devices' rows."""
    rows = int(config.data.val_batch_size)
    host = val_source.batch(config.seed, 0, 0, 1, rows)
    pad = padded_rows(rows, mesh) - rows
    padded = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in host.items()}
    sharding = parallel.batch_sharding(mesh)
    return host, parallel.host_to_global(padded, {k: sharding for k in padded})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) ``config`` in ``workdir`` up to config.num_steps; returns the final state."""
    check_config(config)
    local = summary.appends_in_place(workdir)   # else an object store (gs://...): nothing to check locally
    workdir = checkpointing.storage_path(io.check_output_folder(workdir) if local else workdir)
    parallel.check_processes_agree({"config": checkpointing.jsonable(config.to_dict()), "workdir": str(workdir)})
    if config.init_from and not checkpointing.storage_path(config.init_from).exists():
        raise FileNotFoundError(f"config.init_from {config.init_from} does not exist; pass a trained workdir, a "
                                "checkpoint step folder or a reference .pth")
    # The data (with the intensity contract a resumed run's checkpoints store) is opened before the workdir
    # is touched, so bad data leaves nothing behind.
    newest = checkpointing.newest_readable_meta(workdir / checkpointing.CHECKPOINT_DIR)
    stored = newest[1].get(intensity_lib.META_KEY) if newest is not None else None
    train_source, val_source = build_sources(config, intensity_lib.Intensity.from_dict(stored) if stored else None)
    if newest is not None and stored is None and train_source.intensity is not None:
        log.warning("resuming a run trained before the intensity contract existed (each image normalised by its own "
                    "statistics): from now on the data is mapped with a contract fitted on the training set, so "
                    "the model sees a changed intensity mapping; start a new workdir to train on one mapping")
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0

    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, dcn_data=config.mesh.dcn_data)
    log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.devices.size, jax.process_count())
    batch_sharding = parallel.batch_sharding(mesh)
    row_blocks = parallel.process_row_blocks(batch_sharding, config.batch_size)   # clear divisibility error
    unet = models.unet_config(config.model.to_dict())
    identity = checkpointing.model_identity(config.task, unet)
    vem = config.task in VEM_TASKS
    programs = programs_for(config, mesh)
    abstract, shardings = programs.abstract, programs.shardings
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0)   # host key: init runs on the host
    _, train_key, eval_key = parallel.global_keys(config.seed, 3, mesh)

    ckpt = checkpointing.Checkpointer(
        workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
        keep_best=config.checkpoint.keep_best if config.eval.every_steps else 0,
        best_metric=config.checkpoint.best_metric, best_mode=config.checkpoint.best_mode)
    ckpt.check_compatible(identity)
    restored = ckpt.restore_newest_complete(parallel.with_sharding(abstract, shardings))
    contract = {} if train_source.intensity is None else {intensity_lib.META_KEY: train_source.intensity.to_dict()}
    if is_main:  # only once the workdir is known to fit this configuration
        (workdir / "config.json").write_text(json.dumps(checkpointing.jsonable({**config.to_dict(), **contract}),
                                                        indent=2))
    if train_source.intensity is None:
        log.warning("the training data carries no intensity contract (a prepared dataset written before it "
                    "existed): checkpoints will not store one and prediction falls back to per-image mapping; "
                    "prepare the dataset again to fix this")
    else:
        log.info("intensity contract: input %s, target %s", _describe(train_source.intensity.input),
                 _describe(train_source.intensity.target))
    latest = None if restored is None else restored[0]
    if restored is not None:
        state = restored[1]
        log.info("resuming from %s at step %d", ckpt.directory / str(latest), latest)
    elif config.init_from:
        loaded = checkpointing.load_model(config.init_from, task=config.task, unet=unet)
        _check_params_fit(loaded.params, abstract.params, config.init_from)
        state = programs.from_params(parallel.host_to_global(loaded.params, shardings.params))
        log.info("fresh run initialised from %s (EMA weights of the source model)", config.init_from)
    else:
        state = programs.init(init_key)
        log.info("fresh run: %d parameters initialised", models.count_params(unet))

    step = int(jax.device_get(state.step))
    meta = {**identity, "z_factor": int(config.data.z_factor) if vem else None,
            "patch_size": int(config.data.patch_size), "config": config.to_dict(), **contract}
    if step >= config.num_steps:
        log.info("workdir already at step %d >= num_steps %d; nothing to do", step, config.num_steps)
        ckpt.close()
        return state

    train_step, validate = programs.train_step, None
    if config.eval.every_steps:
        test_schedule = {**config.diffusion.test_schedule.to_dict(), "n_timestep": config.eval.sample_steps}
        validate = build_validation(unet, _frozen(test_schedule), vem, int(config.eval.num_samples),
                                    config.compute_dtype, mesh, int(config.data.val_batch_size), config.objective,
                                    config.parametrization == "residual")
        val_host, val_batch = _validation_batch(val_source, config, mesh)
        validate = parallel.compiled_on_every_process(validate, state.ema_params, val_batch, eval_key)

    metrics_log = summary.MetricsLog(workdir / "metrics.jsonl", resume_step=step if latest is not None else None,
                                     enabled=is_main)
    writer = summary.EventWriter(workdir / "tensorboard") if is_main else None
    t_last, step_last, t_first = time.time(), step, None
    queued = None   # the previous step's metrics: at most two steps are dispatched and not yet computed
    with _PreemptionFlag() as preempt:
        batches = _batches(train_source, config, step, row_blocks)
        try:
            for data_step, local in batches:
                assert data_step == step
                batch = parallel.global_batch(local, batch_sharding)
                if t_first is None:
                    train_step = parallel.compiled_on_every_process(train_step, state, batch, train_key)
                state, metrics = train_step(state, batch, train_key)
                step += 1
                if t_first is None:
                    jax.block_until_ready(metrics)
                    t_first = time.time() - t_last
                    log.info("first step (with compilation) took %.1f s", t_first)
                    t_last, step_last = time.time(), step
                if queued is not None:   # without this bound the loop dispatches up to log_every steps ahead,
                    jax.block_until_ready(queued)   # and a SIGTERM waits for all of them before the save
                queued = metrics
                preempted = preempt.raised or ckpt.reached_preemption(step)
                do_eval = validate is not None and (step % config.eval.every_steps == 0
                                                     or step == config.num_steps)
                do_save = (ckpt.should_save(step) or step == config.num_steps or preempted or do_eval)
                do_log = step % config.log_every == 0 or step == config.num_steps
                if not (do_log or do_save):
                    continue   # (the loop ends at num_steps, which always logs and saves)
                metrics = jax.device_get(metrics)
                if not metrics["finite"] > 0:
                    ckpt.wait()
                    raise FloatingPointError(
                        f"loss or gradients became NaN/Inf by step {step} (loss {metrics['loss']}); stopped "
                        f"without saving. The last good checkpoint (step {ckpt.latest_step()}) is intact in "
                        f"{ckpt.directory}; lower optim.learning_rate or set optim.grad_clip_norm and resume.")
                if do_log:
                    now = time.time()
                    elapsed = max(now - t_last, 1e-9)
                    rate = (step - step_last) / elapsed if step > step_last else 1 / t_first
                    t_last, step_last = now, step
                    loss = float(metrics["loss"])
                    log.info("step %d/%d | loss %.5f | grad norm %.3g | %.2f steps/s | ETA %s", step,
                             config.num_steps, loss, float(metrics["grad_norm"]), rate,
                             _format_eta((config.num_steps - step) / rate if rate > 0 else float("inf")))
                    metrics_log.write(step, loss=loss, grad_norm=float(metrics["grad_norm"]))
                    if writer is not None:
                        writer.scalar("train/loss", loss, step)
                        writer.scalar("train/grad_norm", float(metrics["grad_norm"]), step)
                        writer.scalar("train/steps_per_sec", rate, step)
                val_metrics = None
                if do_eval:
                    val_metrics = _run_validation(validate, state, val_host, val_batch, eval_key, step, config,
                                                  writer)
                    metrics_log.write(step, **{f"val_{k}": v for k, v in val_metrics.items()})
                if do_save:
                    ckpt.save(step, state, {**meta, "step": step}, metrics=val_metrics, force=True)
                    _flush_logs(metrics_log, writer)
                if preempted:
                    log.info("preemption signal: saved step %d, exiting", step)
                    break
                if step >= config.num_steps:
                    break
        finally:
            batches.close()
            ckpt.close()
            metrics_log.flush()
            if writer is not None:
                writer.close()
    return state


def _flush_logs(metrics_log: summary.MetricsLog, writer: summary.EventWriter | None) -> None:
    """Makes the logs durable at a checkpoint (a no-op for local files, which are written line by line;
    one upload each on object stores)."""
    metrics_log.flush()
    if writer is not None:
        writer.flush()


def _describe(params: Any) -> str:
    return f"{params.mode} [{params.lo:g}, {params.hi:g}] -> [-1, 1] ({params.dtype})"


def _batches(source: Any, config: ml_collections.ConfigDict, start_step: int, blocks: list[tuple[int, int]]):
    """This process's rows (``blocks``, from parallel.process_row_blocks) of the global batches from
    start_step on, prepared ahead in a thread per block. A block [a, b) is share a / (b - a) of
    batch_size / (b - a) equal shares in the data source's terms."""
    from emdiffuse_jax.data.pipeline import iterate_batches

    gb = config.batch_size
    streams = [iterate_batches(source, config.seed, start_step, process_index=a // (b - a),
                               process_count=gb // (b - a), global_batch=gb, prefetch=2) for a, b in blocks]
    try:
        for parts in zip(*streams):
            step = parts[0][0]
            yield step, (parts[0][1] if len(parts) == 1 else
                         {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]})
    finally:
        for stream in streams:
            stream.close()


def _weights(state: TrainState, which: str) -> Any:
    return state.ema_params if which == "ema" else state.params


def _run_validation(validate, state: TrainState, val_host: dict, val_batch: dict, eval_key: jax.Array,
                    step: int, config: ml_collections.ConfigDict, writer: summary.EventWriter | None) -> dict:
    """Scores config.eval.weights (these metrics rank the best checkpoint); with eval.compare_weights also
    the other weights, on the same batch and key, returned as <other>_<metric>."""
    t0 = time.time()
    key = jax.random.fold_in(eval_key, step)
    primary = config.eval.weights
    metrics, mean, std = validate(_weights(state, primary), val_batch, key)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if config.eval.compare_weights:
        other = "online" if primary == "ema" else "ema"
        extra, _, _ = validate(_weights(state, other), val_batch, key)
        metrics.update({f"{other}_{k}": float(v) for k, v in jax.device_get(extra).items()})
    log.info("validation at step %d (%s weights, %d sampler steps, %.1f s): %s", step, primary,
             config.eval.sample_steps, time.time() - t0, " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if writer is not None:
        for name, value in metrics.items():
            writer.scalar(f"val/{name}", value, step)
        host = {**val_host, "mean": np.asarray(mean), "std": np.asarray(std)}
        for i in range(min(config.eval.num_images, host["cond"].shape[0])):
            panel = evaluation.summary_panel(host["cond"][i], host["mean"][i], host["std"][i], host["target"][i])
            writer.image(f"val/{i}/condition_mean_std_target", summary.to_uint8(panel, 0.0, 1.0), step)
    return metrics
