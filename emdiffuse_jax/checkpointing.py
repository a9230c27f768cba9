"""Orbax checkpoints of the training state, model identity checks, and the inference loader.

Layout: ``<workdir>/checkpoints/<step>/{state,meta}``; ``state`` is the TrainState (step, params,
ema_params, opt_state), ``meta`` a JSON record of what was trained (task, UNet config, z_factor,
patch size, full config). Fixes the reference's resume bugs: the optimizer state is restored, nothing is
loaded from a default path behind the user's back, missing or mismatching weights are an error, and a
workdir holding another model's checkpoint refuses to resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

CHECKPOINT_DIR = "checkpoints"


def storage_path(path: str | os.PathLike) -> epath.Path:
    """A local path (made absolute, as Orbax needs) or an object-store URI such as gs://bucket/run
    (left as it is), as an etils Path that Orbax and the log writers accept."""
    from emdiffuse_jax.summary import appends_in_place

    return epath.Path(path).absolute() if appends_in_place(path) else epath.Path(path)


class IncompatibleCheckpointError(ValueError):
    """A checkpoint exists but belongs to a different model or task."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (damaged, incomplete or not ours); the message names it and the fix."""


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def model_identity(task: str, unet: Any) -> dict:
    """What must match for a checkpoint to be resumed: the task and every UNet hyper-parameter."""
    return {"task": task, "unet": jsonable(dataclasses.asdict(unet))}


def identity_mismatch(saved: dict, wanted: dict) -> list[str]:
    """Human-readable differences between two model identities (empty when compatible)."""
    diffs = []
    if saved.get("task") != wanted["task"]:
        diffs.append(f"task {saved.get('task')!r} (checkpoint) vs {wanted['task']!r} (config)")
    saved_unet, wanted_unet = saved.get("unet", {}), wanted["unet"]
    for key in sorted(set(saved_unet) | set(wanted_unet)):
        if key in ("dropout", "image_size"):   # change no parameter shape; may differ when fine-tuning
            continue
        if saved_unet.get(key) != wanted_unet.get(key):
            diffs.append(f"model.{key} {saved_unet.get(key)!r} (checkpoint) vs {wanted_unet.get(key)!r} (config)")
    return diffs


class Checkpointer:
    """Orbax CheckpointManager for one workdir: interval + preemption saves, keep last N and best N."""

    def __init__(self, workdir: str | os.PathLike, *, every_steps: int, keep: int = 3, keep_best: int = 0,
                 best_metric: str = "psnr", best_mode: str = "max", async_save: bool = True):
        if best_mode not in ("max", "min"):
            raise ValueError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = storage_path(workdir) / CHECKPOINT_DIR
        keepers = [policies.LatestN(n=max(1, keep))]
        if keep_best > 0:
            keepers.append(policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                                          n=keep_best, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(max(1, every_steps)), policies.PreemptionCheckpointingPolicy()]),
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None, force: bool = False) -> bool:
        """Starts an (asynchronous) save; returns whether one was started."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(jsonable(meta)))
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def read_meta(self, step: int) -> dict:
        return read_meta(self.directory / str(step))

    def check_compatible(self, identity: dict) -> None:
        """Raises IncompatibleCheckpointError when the newest readable checkpoint is of another model."""
        newest = newest_readable_meta(self.directory)
        if newest is None:
            return
        step, meta = newest
        diffs = identity_mismatch(meta, identity)
        if diffs:
            raise IncompatibleCheckpointError(
                f"{self.directory} holds a checkpoint (step {step}) of another model: " + "; ".join(diffs)
                + ". Refusing to resume. Use a new --workdir, or start from it with --config.init_from.")

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Exact restore into ``abstract_state`` (ShapeDtypeStructs carrying the wanted shardings)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        return restored.state

    def restore_newest_complete(self, abstract_state: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that restores completely; None when there is none.

        A newer checkpoint that fails to restore (truncated, half-deleted, damaged metadata: a crash or a
        full disk during its save) is moved to ``<workdir>/damaged_checkpoints/<step>`` (kept for
        inspection, never deleted) and the fallback is logged. When no checkpoint restores, nothing is
        moved and the newest one's error is raised: that is not damage but a problem to fix.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                self.read_meta(step)
                state = self.restore(step, abstract_state)
            except Exception as err:  # Orbax and tensorstore raise many types for damaged files
                failures.append((step, err))
                continue
            for bad, err in failures:
                self._set_aside(bad, err, fallback=step)
            return step, state
        if failures:
            step, err = failures[0]
            raise CheckpointError(f"{self.directory / str(step)}: cannot restore this checkpoint "
                                  f"({type(err).__name__}: {err}), nor any older one in {self.directory}; "
                                  "use a new --workdir, or start from a copy with --config.init_from") from err
        return None

    def _set_aside(self, step: int, err: BaseException, fallback: int) -> None:
        damaged = self.directory.parent / "damaged_checkpoints" / str(step)
        logging.getLogger("emdiffuse_jax.checkpointing").warning(
            "checkpoint step %d is damaged or incomplete (%s: %s); moved it to %s and resuming from step %d, the "
            "newest complete checkpoint", step, type(err).__name__, str(err).splitlines()[0][:200], damaged, fallback)
        if jax.process_index() == 0:
            damaged.parent.mkdir(exist_ok=True)
            (self.directory / str(step)).rename(damaged)   # epath: also on object stores
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def newest_readable_meta(directory: str | os.PathLike) -> tuple[int, dict] | None:
    """(step, meta) of the newest step folder under a checkpoints/ directory whose metadata reads (damaged
    newer ones are skipped: `Checkpointer.restore_newest_complete` sets them aside); None when there is none."""
    directory = storage_path(directory)
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True) \
        if directory.is_dir() else []
    for step in steps:
        try:
            return step, read_meta(directory / str(step))
        except (FileNotFoundError, ValueError):
            continue
    return None


def read_meta(step_dir: str | os.PathLike) -> dict:
    path = storage_path(step_dir) / "meta" / "metadata"
    if not path.exists():
        raise FileNotFoundError(f"{step_dir} is not a complete emdiffuse_jax checkpoint (missing {path}); "
                                "it may have been interrupted while saving")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({type(err).__name__}: {err}); use another "
                              "checkpoint step folder of that workdir, or retrain") from err
    if not isinstance(meta, dict) or "task" not in meta:
        raise CheckpointError(f"{path}: not the metadata of an emdiffuse_jax model checkpoint (no task); "
                              "pass a training workdir, a checkpoint step folder or a reference .pth")
    return meta


# --- inference loader ------------------------------------------------------------------------------------

WEIGHTS = ("ema", "online")


class LoadedModel(NamedTuple):
    unet: Any            # models.UNetConfig
    params: Any          # the chosen weights, EMA by default (plain nested dict of arrays)
    task: str
    meta: dict           # z_factor, patch_size, step, config ... ({"source": "torch"} for a .pth)


def _step_dir(path: epath.Path, step: int | None) -> epath.Path:
    """The checkpoint step directory for a workdir, a checkpoints/ directory, or a step directory."""
    if (path / "meta").is_dir() and (path / "state").is_dir():
        return path
    root = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "meta").is_dir()) \
        if root.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"no emdiffuse_jax checkpoint under {path}: expected a training workdir, its "
                                f"{CHECKPOINT_DIR}/ folder, a step folder, or a reference .pth file")
    if step is None:
        return root / str(steps[-1])
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} under {root}; available: {steps}")
    return root / str(step)


def check_weights(weights: str) -> str:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS} (EMA or online parameters), got {weights!r}")
    return weights


def restore_params(step_dir: str | os.PathLike, unet: Any, weights: str = "ema") -> Any:
    """Only the EMA ('ema') or online ('online') parameters of a checkpoint, onto the default device
    (any saving topology)."""
    from emdiffuse_jax import models

    key = {"ema": "ema_params", "online": "params"}[check_weights(weights)]
    abstract = jax.eval_shape(lambda k: models.init_params(unet, k), jax.random.key(0))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {key: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)}
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    restored = checkpointer.restore(
        storage_path(step_dir) / "state",
        args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                    partial_restore=True))
    return restored[key]


def load_model(path: str | os.PathLike, task: str | None = None, *, unet: Any = None,
               step: int | None = None, weights: str = "ema") -> LoadedModel:
    """Loads a model for prediction: our workdir / checkpoint step dir, or a reference .pth.

    task: the expected task; a checkpoint of another task (or, for a .pth, of the other network family)
    is an error. A .pth does not record its task: without ``task`` it is reported as "denoise" (2D) or
    "vem_i" (vEM), which predict identically to "superres" / "vem_a". unet: UNetConfig or dict of a .pth
    whose network differs from the published one (vem and in_channel are read from the file).
    step: which checkpoint of a workdir (default: the newest). weights: 'ema' (default; the EMA warms up
    from step 1, see train_state.ema_decay_at) or 'online' (the optimizer's current parameters). A .pth
    holds one set (the reference writes <prefix>_Network.pth, online, and <prefix>_Network_ema.pth): pick
    the file; 'online' with a .pth is refused rather than silently ignored.
    """
    from emdiffuse_jax import models
    from emdiffuse_jax.train_config import TASKS, VEM_TASKS

    path = storage_path(path)
    check_weights(weights)
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if path.suffix == ".pth":
        if not path.is_file():
            raise FileNotFoundError(f"reference checkpoint {path} does not exist")
        if weights != "ema":
            raise ValueError(f"{path} is a reference .pth, which holds one set of weights: choose the file "
                             "(<prefix>_Network.pth = online, <prefix>_Network_ema.pth = EMA) instead of "
                             f"weights={weights!r}")
        from emdiffuse_jax.convert import load_torch_checkpoint

        if unet is None:
            values = {}
        elif isinstance(unet, dict):
            values = dict(unet)
        else:
            values = dataclasses.asdict(models.unet_config(unet))
        if task is not None:
            values.setdefault("vem", task in VEM_TASKS)
        params = load_torch_checkpoint(path, values)   # infers vem / in_channel from the file when not given
        values.update(vem="channel_embed" in params,
                      in_channel=int(params["input_blocks_0_0"]["kernel"].shape[2]))
        cfg = models.unet_config(values)
        inferred = task is None
        task = task or ("vem_i" if cfg.vem else "denoise")
        return LoadedModel(cfg, params, task, {"source": "torch", "path": str(path), "task": task,
                                               "task_inferred": inferred})
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    step_dir = _step_dir(path, step)
    meta = read_meta(step_dir)
    if task is not None and meta.get("task") != task:
        raise IncompatibleCheckpointError(
            f"{step_dir} is a {meta.get('task')!r} model but task {task!r} was requested; "
            f"use a checkpoint trained for {task!r} or set the task to {meta.get('task')!r}")
    saved_unet = models.unet_config(meta["unet"])
    try:
        params = restore_params(step_dir, saved_unet, weights)
    except Exception as err:  # Orbax and tensorstore raise many types for damaged files
        raise CheckpointError(f"{step_dir}: cannot restore the model weights ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''}); the checkpoint is damaged or "
                              "incomplete - pass another checkpoint step folder of that workdir") from err
    logging.info("loaded %s weights of step %s (%s) from %s", weights, meta.get("step"), meta.get("task"), step_dir)
    return LoadedModel(saved_unet, params, meta["task"], {**meta, "weights": weights})


def trained_z_factor(loaded: LoadedModel, z_factor: int, declared: int | None = None) -> tuple[int, str]:
    """The z_factor a vEM model was trained for and where that is known from; raises ValueError unless it
    equals `z_factor` (the network embeds the index of the slice it generates, 0 ... Z - 2, so it only works
    with its training Z). Our checkpoints record it; a reference .pth does not, so `declared` (the
    --trained_z_factor the user read in docs/weights.md) is required for one."""
    recorded = loaded.meta.get("z_factor")
    if loaded.meta.get("source") == "torch":
        if declared is None:
            raise ValueError(f"{loaded.meta.get('path')} (PyTorch weights) does not record the z_factor it was "
                             "trained with; pass --trained_z_factor=Z (6 for the published vEMDiffuse-i weights, 5 "
                             "for vEMDiffuse-a; see docs/weights.md) and the same --z_factor")
        trained, source = int(declared), "--trained_z_factor (a .pth does not record it)"
    elif recorded:
        if declared is not None and int(declared) != int(recorded):
            raise ValueError(f"the checkpoint records z_factor={recorded}; --trained_z_factor={declared} contradicts "
                             "it (drop --trained_z_factor for our checkpoints)")
        trained, source = int(recorded), "checkpoint metadata"
    elif declared is not None:
        trained, source = int(declared), "--trained_z_factor (the checkpoint does not record it)"
    else:
        return z_factor, "unknown (the checkpoint does not record it; --z_factor taken as given)"
    if trained != z_factor:
        raise ValueError(f"the model was trained for z_factor={trained} ({source}; its slice embedding is tied to "
                         f"it), got --z_factor={z_factor}")
    return trained, source
