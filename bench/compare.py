"""Side-by-side speed of the published PyTorch EMDiffuse-n and this project, measured in one process run.

Times the full EMDiffuse-n network (15.68 M parameters, float32, random weights, random data) forward at
batch --forward_batch and the training step at batch --train_batch (loss + backward + Adam + EMA update,
dropout on) of both implementations, alternating call by call so that load on a shared machine hits both
alike, and prints one table: medians, the ratio, peak memory (each implementation and section in a fresh
subprocess, counted from after setup and compilation, i.e. the memory of running), achieved GFLOP/s
(103.8 GFLOP per 256 x 256 forward, scaled by pixel count; a training step counts as 3 forwards) against a
float32 4096 x 4096 matrix product measured in the same run as the practical ceiling, then the time to result for one --image x --image image with K = --num_samples at the
quality of the published 1000-step DDPM (per-evaluation time measured here x evaluation count), the CPU
model and flags, load average and library versions. All figures also go to --json.

The published code is not part of this project: fetch github.com/Luchixiang/EMDiffuse into a folder and
pass it with --reference; PyTorch comes with `pip install -e ".[torch]"`. Without --reference only this
project is timed (the table says so).

    python bench/compare.py --reference=PATH/EMDiffuse [--forward_repeats=5] [--train_repeats=3]
    python bench/compare.py                          # this project only
"""

import importlib
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time
import types

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from absl import app, flags  # noqa: E402

_REFERENCE = flags.DEFINE_string("reference", None, "Folder of a copy of the published EMDiffuse code.")
_SIZE = flags.DEFINE_integer("size", 256, "Image (patch) size of forward and training step.")
_FORWARD_BATCH = flags.DEFINE_integer("forward_batch", 1, "Batch size of the forward timing.")
_FORWARD_REPEATS = flags.DEFINE_integer("forward_repeats", 5, "Timed forwards per implementation.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 4, "Batch size of the training-step timing.")
_TRAIN_REPEATS = flags.DEFINE_integer("train_repeats", 3, "Timed training steps per implementation.")
_SECTIONS = flags.DEFINE_list("sections", ["forward", "train"], "Which of forward, train to run.")
_MEMORY = flags.DEFINE_bool("memory", True, "Measure peak memory per implementation in fresh subprocesses.")
_IMAGE = flags.DEFINE_integer("image", 1024, "Image side of the time-to-result estimate.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 4, "Samples K per image of the time-to-result estimate.")
_SAMPLERS = flags.DEFINE_list(
    "samplers", ["dpm:10", "dpm:20"], "Our sampler:steps settings at the published 1000-step DDPM's quality "
    "(docs/prediction.md, held-out FIB-SEM: DPM-Solver++ 10 steps +0.20 dB PSNR, 20 steps +0.13 dB).")
_PAUSE = flags.DEFINE_float(
    "pause", 1.0, "Seconds of idle before each timed call, so that the other library's worker threads have "
    "stopped spinning (XLA's and PyTorch's thread pools busy-wait for a while after their work).")
_JSON = flags.DEFINE_string("json", "compare.json", "Where to write all figures as JSON ('' = nowhere).")
_COMPUTE_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "float32", ["float32", "bfloat16"], "Our compute dtype (parameters stay float32; the "
    "published code always runs float32). bfloat16 pays off only where the CPU has AVX512-BF16/AMX.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: IMPL:SECTION, run it once and print peak RSS.")

OURS, PUBLISHED = "emdiffuse-jax", "published PyTorch"
FORWARD_GFLOP_256 = 103.8          # one 256 x 256 forward of the full network (counted for the reference)
TRAIN_FORWARDS = 3                 # forward + backward ~ 3 forwards of arithmetic
PUBLISHED_TEST_STEPS = 1000        # the published test schedule (DDPM, every step one evaluation)


# --------------------------------------------------------------------------------------------- machine

def _cpu_model() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines() if os.path.exists("/proc/cpuinfo") else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The vector-unit flags that decide CPU matrix-product speed (AVX2/AVX-512/bf16/AMX)."""
    if not os.path.exists("/proc/cpuinfo"):
        return []
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16",
                      "amx_tile")
            return [f for f in wanted if f in present]
    return []


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20     # KiB on Linux


def _median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


# ------------------------------------------------------------------------------------ implementations

def _model_config():
    """The EMDiffuse-n network/optimizer/EMA settings of the shipped config, shared by both sides."""
    from emdiffuse_jax.configs import emdiffuse_n

    config = emdiffuse_n.get_config(None)
    config.compute_dtype = _COMPUTE_DTYPE.value
    return config


class Ours:
    """This project's network and its real training step (the one launch/train.py runs)."""

    name = OURS

    def __init__(self):
        import jax
        from emdiffuse_jax import models

        self.jax = jax
        self.config = _model_config()
        self.unet = models.unet_config(self.config.model.to_dict())
        self.num_params = models.count_params(self.unet)
        self.setup = {}

    def forward(self, batch, size):
        import jax.numpy as jnp
        import numpy as np
        from emdiffuse_jax import models

        jax = self.jax
        t0 = time.perf_counter()
        params = jax.block_until_ready(models.init_params(self.unet, jax.random.key(0)))
        self.setup["forward init s"] = time.perf_counter() - t0
        apply = models.make_apply_fn(self.unet, dtype=jnp.dtype(self.config.compute_dtype))
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, self.unet.in_channel)), jnp.float32)
        gamma = jnp.full((batch,), 0.5, jnp.float32)
        t0 = time.perf_counter()
        compiled = jax.jit(lambda p, x_, g: apply(p, x_, g)).lower(params, x, gamma).compile()
        self.setup["forward compile s"] = time.perf_counter() - t0
        return lambda: compiled(params, x, gamma).block_until_ready()

    def train(self, batch, size):
        import numpy as np
        from emdiffuse_jax import parallel, train

        jax, config = self.jax, self.config
        mesh = parallel.make_mesh(-1, 1)
        t0 = time.perf_counter()
        programs = train.programs_for(config, mesh)      # what launch/train.py builds and runs
        state = jax.block_until_ready(programs.init(jax.random.key(0)))
        self.setup["train init s"] = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        data = {"cond": rng.uniform(-1, 1, (batch, size, size, 1)).astype(np.float32),
                "target": rng.uniform(-1, 1, (batch, size, size, 1)).astype(np.float32)}
        data = parallel.global_batch(data, parallel.batch_sharding(mesh))
        key = jax.device_put(jax.random.key(1), parallel.replicated(mesh))
        t0 = time.perf_counter()
        compiled = programs.train_step.lower(state, data, key).compile()
        self.setup["train compile s"] = time.perf_counter() - t0
        memory = compiled.memory_analysis()
        if memory is not None:     # what XLA allocates for one step: state, batch and temporaries
            self.setup["train XLA buffers GiB"] = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                                   - memory.alias_size_in_bytes + memory.temp_size_in_bytes) / 2 ** 30
        holder = [state]

        def step():
            holder[0], metrics = compiled(holder[0], data, key)
            jax.block_until_ready((holder[0], metrics))
        return step


def _import_published(reference: pathlib.Path):
    """The published `models.EMDiffuse_network` module, imported without its package __init__ (which pulls
    in the whole training framework: loggers, data loaders)."""
    network_file = reference / "models" / "EMDiffuse_network.py"
    if not network_file.is_file():
        raise app.UsageError(f"--reference={reference}: no models/EMDiffuse_network.py there; pass the folder "
                             "of a copy of github.com/Luchixiang/EMDiffuse")
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise app.UsageError("--reference needs PyTorch: pip install -e \".[torch]\"") from err
    package = types.ModuleType("published_emdiffuse")
    package.__path__ = [str(reference / "models")]
    sys.modules["published_emdiffuse"] = package
    sys.path.insert(0, str(reference))          # for its `core.base_network`
    return importlib.import_module("published_emdiffuse.EMDiffuse_network")


class Published:
    """The published Network (its UNet, loss and DDPM forward) with its Adam and EMA, as its trainer runs."""

    name = PUBLISHED

    def __init__(self, reference: pathlib.Path):
        import torch

        self.torch = torch
        self.module = _import_published(reference)
        config = _model_config()
        unet = {k: v for k, v in config.model.to_dict().items() if k not in ("vem", "zero_init")}
        unet = {k: list(v) if isinstance(v, tuple) else v for k, v in unet.items()}
        rename = lambda s: {("schedule" if k == "kind" else k): v for k, v in s.items()}
        self.network_args = dict(unet=unet, beta_schedule={"train": rename(config.diffusion.train_schedule),
                                                            "test": rename(config.diffusion.test_schedule)})
        self.optim = config.optim
        self.ema_decay = config.ema_decay
        self.setup = {}
        self.num_params = sum(p.numel() for p in self._network().denoise_fn.parameters())

    def _network(self):
        torch = self.torch
        torch.manual_seed(0)
        net = self.module.Network(**self.network_args, init_type="kaiming")
        net.init_weights()
        net.set_loss(torch.nn.functional.mse_loss)
        net.set_new_noise_schedule(phase="train")
        return net

    def forward(self, batch, size):
        torch = self.torch
        t0 = time.perf_counter()
        unet = self._network().denoise_fn.eval()
        self.setup["forward init s"] = time.perf_counter() - t0
        x = torch.rand(batch, self.network_args["unet"]["in_channel"], size, size) * 2 - 1
        gamma = torch.full((batch, 1), 0.5)

        def run():
            with torch.no_grad():
                unet(x, gamma)
        return run

    def train(self, batch, size):
        import copy

        torch = self.torch
        t0 = time.perf_counter()
        net = self._network().train()
        ema = copy.deepcopy(net)
        opt = torch.optim.Adam(net.parameters(), lr=self.optim.learning_rate, betas=(self.optim.b1, self.optim.b2),
                               eps=self.optim.eps, weight_decay=0)
        self.setup["train init s"] = time.perf_counter() - t0
        cond, target = torch.rand(batch, 1, size, size) * 2 - 1, torch.rand(batch, 1, size, size) * 2 - 1
        decay = self.ema_decay

        def step():
            opt.zero_grad()
            net(target, cond).backward()
            opt.step()
            with torch.no_grad():     # the published EMA.update_model_average
                for p_ema, p in zip(ema.parameters(), net.parameters()):
                    p_ema.mul_(decay).add_(p, alpha=1 - decay)
        return step


# ------------------------------------------------------------------------------------------- measuring

def _matmul_ceiling(impls) -> dict:
    """GFLOP/s of a float32 4096 x 4096 matrix product in each library present (median of 3)."""
    n, results = 4096, {}
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    runs = {"jax": lambda: matmul(a, a).block_until_ready()}
    if any(isinstance(i, Published) for i in impls):
        import torch
        t = torch.randn(n, n)
        runs["torch"] = lambda: torch.mm(t, t)
    for name, run in runs.items():
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        results[name] = 2 * n ** 3 / _median(times) / 1e9
    return results


def _gflop(section: str, batch: int, size: int) -> float:
    forwards = batch * (TRAIN_FORWARDS if section == "train" else 1)
    return FORWARD_GFLOP_256 * forwards * (size / 256) ** 2


def _run_alternating(runs: dict, repeats: int) -> dict:
    """One warm-up call each, then `repeats` rounds calling every implementation once per round."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            time.sleep(_PAUSE.value)
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times


def _worker_peak_gib(impl: str, section: str) -> float:
    """Peak RSS of one implementation doing one section (setup + 2 calls) in a fresh process."""
    args = [sys.executable, os.path.abspath(__file__), f"--worker={impl}:{section}", f"--size={_SIZE.value}",
            f"--forward_batch={_FORWARD_BATCH.value}", f"--train_batch={_TRAIN_BATCH.value}",
            f"--compute_dtype={_COMPUTE_DTYPE.value}"]
    if _REFERENCE.value:
        args.append(f"--reference={_REFERENCE.value}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"memory worker {impl}:{section} failed (exit {done.returncode}; -9: killed, "
                           f"e.g. out of memory):\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _make_impl(which: str):
    if which == "ours":
        return Ours()
    return Published(pathlib.Path(_REFERENCE.value).expanduser().resolve())


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark of this process (Linux), so that compilation does not count."""
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_since_reset_gib() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20           # kB
    raise OSError("no VmHWM in /proc/self/status")


def _worker() -> None:
    """Prints the peak RSS of two calls, after setup and compilation (those excluded where Linux allows)."""
    which, section = _WORKER.value.split(":")
    impl = _make_impl(which)
    batch = _FORWARD_BATCH.value if section == "forward" else _TRAIN_BATCH.value
    run = getattr(impl, section)(batch, _SIZE.value)
    reset = _reset_peak_rss()
    run()
    run()
    print(_peak_rss_since_reset_gib() if reset else _peak_rss_gib())


def _tiles_published(side: int, tile: int = 256, overlap: float = 0.125) -> int:
    """Patches the published test crop cuts from a side x side image: stride int(tile * (1 - overlap)),
    patches only where they fit entirely (so the last partial stripe is not restored at all)."""
    stride = int(tile * (1 - overlap))
    per_axis = (side - tile) // stride + 1 if side >= tile else 0
    return per_axis * per_axis


def _time_to_result(forward_per_tile: dict) -> dict:
    """Evaluations (tiles x K x steps) and their time (x measured s per tile evaluation) for one image."""
    from emdiffuse_jax.data import tiling

    side, k = _IMAGE.value, _NUM_SAMPLES.value
    published_tiles = _tiles_published(side, _SIZE.value)
    settings = [(PUBLISHED, "ddpm", PUBLISHED_TEST_STEPS, published_tiles)]
    ours_tiles = len(tiling.tile_origins((side, side), (_SIZE.value, _SIZE.value), 32))
    for spec in _SAMPLERS.value:
        sampler, _, steps = spec.partition(":")
        settings.append((OURS, sampler, int(steps), ours_tiles))
    rows = {}
    for name, sampler, steps, tiles in settings:
        row = {"implementation": name, "sampler": sampler, "steps": steps, "tiles": tiles,
               "evaluations": tiles * k * steps}
        if name in forward_per_tile:
            row["s per evaluation"] = forward_per_tile[name]
            row["wall s"] = row["evaluations"] * forward_per_tile[name]
        rows[f"{name}, {sampler} {steps}"] = row
    return rows


def _print_table(result: dict) -> None:
    names = result["implementations"]
    both = len(names) == 2
    print(f"\nEMDiffuse-n full network ({result['num_params']:,} parameters), ours {result['compute_dtype']}, published float32, "
          f"{result['size']} x "
          f"{result['size']}, random weights and data")
    print(f"CPU: {result['cpu']} ({result['cores']} cores; {', '.join(result['cpu_flags']) or 'no AVX flags'}); "
          f"jax {result['versions']['jax']}, torch {result['versions'].get('torch', '-')}"
          + (f" ({result['torch_threads']} threads)" if "torch_threads" in result else ""))
    print(f"load average (1/5/15 min): at start {result['load_start']}, at end {result['load_end']}")
    ceiling = result["matmul_gflops"]
    print("float32 4096 x 4096 matrix product: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceiling.items()))
    if not both:
        print(f"NOTE: {PUBLISHED} not run (no --reference): this project's figures only, no ratio.")
    best_ceiling = max(ceiling.values())
    head = "| | " + " | ".join(names) + (" | ratio (published / ours) |" if both else " |")
    print("\n" + head)
    print("|" + "---|" * (len(names) + 1 + both))
    for section, sec in result["sections"].items():
        cells = []
        for name in names:
            s = sec[name]
            mem = f", peak {s['peak_gib']:.2f} GiB" if "peak_gib" in s else ""
            cells.append(f"{s['median_s']:.2f} s (min {s['min_s']:.2f}){mem}, {s['gflops']:.0f} GFLOP/s "
                         f"= {100 * s['gflops'] / best_ceiling:.0f} % of matmul")
        label = f"{section}, batch {sec['batch']} (median of {sec['repeats']})"
        ratio = ""
        if both:
            r = sec[PUBLISHED]["median_s"] / sec[OURS]["median_s"]
            ratio = f" {r:.2f}x {'(we are faster)' if r > 1 else '(we are slower)'} |"
            if "peak_gib" in sec[OURS] and "peak_gib" in sec[PUBLISHED]:
                ratio = ratio[:-2] + f"; memory ours / published {sec[OURS]['peak_gib'] / sec[PUBLISHED]['peak_gib']:.2f}x |"
        print(f"| {label} | " + " | ".join(cells) + " |" + ratio)
    setup = result["setup"]
    for name in names:
        if setup.get(name):
            print(f"{name} setup: " + ", ".join(f"{k} {v:.1f}" for k, v in setup[name].items()))
    ttr = result.get("time_to_result")
    if ttr:
        print(f"\nTime to result: one {result['image']} x {result['image']} image, K = {result['num_samples']} "
              f"(per-evaluation time = forward batch {result['forward_batch']} median above)")
        published = next(row for row in ttr.values() if row["implementation"] == PUBLISHED)
        for label, row in ttr.items():
            wall = f", {row['wall s'] / 60:.1f} min" if "wall s" in row else " (not measured)"
            speedup = ""
            if row is not published and "wall s" in row and "wall s" in published:
                speedup = f"; speed-up {published['wall s'] / row['wall s']:.0f}x"
            print(f"  {label}: {row['tiles']} tiles x K x {row['steps']} steps = {row['evaluations']:,} "
                  f"evaluations{wall}{speedup}")
        print("  (the published crop restores only the whole 256-px patches that fit: fewer tiles, edges left out)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKER.value:
        _worker()
        return
    unknown = set(_SECTIONS.value) - {"forward", "train"}
    if unknown:
        raise app.UsageError(f"--sections: unknown {sorted(unknown)}; choose from forward, train")
    load_start = _load()
    which = ["ours"] + (["published"] if _REFERENCE.value else [])
    impls = [_make_impl(w) for w in which]
    names = [i.name for i in impls]
    if len({i.num_params for i in impls}) != 1:
        raise RuntimeError(f"the two networks differ: {[(i.name, i.num_params) for i in impls]} parameters")
    import jax

    result = {"cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "cores": os.cpu_count(),
              "versions": {"jax": jax.__version__, "python": platform.python_version()},
              "implementations": names, "num_params": impls[0].num_params, "size": _SIZE.value,
              "compute_dtype": _COMPUTE_DTYPE.value,
              "load_start": load_start, "sections": {}, "image": _IMAGE.value, "num_samples": _NUM_SAMPLES.value,
              "forward_batch": _FORWARD_BATCH.value}
    if _REFERENCE.value:
        import torch
        result["versions"]["torch"] = torch.__version__
        result["torch_threads"] = torch.get_num_threads()
    peaks = {}
    if _MEMORY.value:          # fresh processes first, before this one holds both models' memory
        for section in _SECTIONS.value:
            for w, impl in zip(which, impls):
                try:
                    peaks[(impl.name, section)] = _worker_peak_gib(w, section)
                except RuntimeError as err:     # e.g. killed for memory on a shared machine: time anyway
                    print(f"WARNING: no peak memory for {impl.name} {section}: {str(err)[-300:]}", flush=True)
    result["matmul_gflops"] = _matmul_ceiling(impls)
    for section in _SECTIONS.value:
        batch, repeats = ((_FORWARD_BATCH.value, _FORWARD_REPEATS.value) if section == "forward"
                          else (_TRAIN_BATCH.value, _TRAIN_REPEATS.value))
        runs = {impl.name: getattr(impl, section)(batch, _SIZE.value) for impl in impls}
        times = _run_alternating(runs, repeats)
        sec = {"batch": batch, "repeats": repeats}
        for name, ts in times.items():
            med = _median(ts)
            sec[name] = {"times_s": ts, "median_s": med, "min_s": min(ts),
                         "gflops": _gflop(section, batch, _SIZE.value) / med}
            if (name, section) in peaks:
                sec[name]["peak_gib"] = peaks[(name, section)]
        result["sections"][section] = sec
        del runs
    result["setup"] = {impl.name: impl.setup for impl in impls}
    if "forward" in result["sections"]:
        fwd = result["sections"]["forward"]
        result["time_to_result"] = _time_to_result(
            {name: fwd[name]["median_s"] / fwd["batch"] for name in names})
    result["load_end"] = _load()
    _print_table(result)
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(json.dumps(result, indent=1))
        print(f"\nJSON: {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
