"""Where the time goes: profiles one call of this project's EMDiffuse-n forward or training step on the CPU
and prints the top XLA operations, grouped by kind (convolution, matrix product, reduction such as the
GroupNorm statistics, elementwise such as normalise/SiLU/FiLM, data movement such as transposes and
concatenations) and one by one with the output shape and the HLO operations they fuse.

    python bench/profile_ops.py [--section=train] [--size=256] [--batch=4] [--top=25]
"""

import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

_SECTION = flags.DEFINE_enum("section", "train", ["forward", "train"], "What to profile.")
_SIZE = flags.DEFINE_integer("size", 256, "Image size.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size.")
_TOP = flags.DEFINE_integer("top", 25, "Operations listed one by one.")

_KINDS = (("convolution", "convolution"), ("dot", "matrix product"), ("reduce", "reduction"),
          ("scatter", "scatter"))
_MOVES = {"transpose", "copy", "concatenate", "pad", "slice", "dynamic-slice", "dynamic-update-slice",
          "broadcast", "reshape", "bitcast", "parameter", "constant", "tuple", "get-tuple-element"}


def _computations(hlo: str) -> dict:
    """HLO computation name -> opcodes of its instructions."""
    comps, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            current = comps.setdefault(head.group(1), [])
            continue
        op = re.match(r"^\s+(?:ROOT )?%?[\w.\-]+ = [^ ]+(?: [^=]*?)? ([a-z\-]+)\(", line)
        if current is not None and op:
            current.append(op.group(1))
    return comps


def _instructions(hlo: str, comps: dict) -> dict:
    """Instruction name -> (kind, output shape, fused opcodes)."""
    found = {}
    for line in hlo.splitlines():
        m = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = (\S+) ([a-z\-]+)\(", line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        called = re.search(r"calls=%?([\w.\-]+)", line)
        ops = comps.get(called.group(1), []) if called else [opcode]
        nested = [o for c in re.findall(r"calls=%?([\w.\-]+)", line) for o in comps.get(c, [])]
        ops = ops + nested
        kind = next((label for key, label in _KINDS if key in ops), None)
        if kind is None:
            kind = "data movement" if set(ops) <= _MOVES else "elementwise"
        found[name] = (kind, shape, sorted(set(ops) - {"parameter", "constant", "tuple", "get-tuple-element"}))
    return found


def main(argv):
    del argv
    import jax
    import numpy as np

    from emdiffuse_jax import models, parallel, train
    from emdiffuse_jax.configs import emdiffuse_n

    config = emdiffuse_n.get_config(None)
    unet = models.unet_config(config.model.to_dict())
    b, s = _BATCH.value, _SIZE.value
    rng = np.random.default_rng(0)
    if _SECTION.value == "forward":
        params = models.init_params(unet, jax.random.key(0))
        apply = models.make_apply_fn(unet)
        args = (params, rng.uniform(-1, 1, (b, s, s, 2)).astype(np.float32), np.full((b,), 0.5, np.float32))
        compiled = jax.jit(lambda p, x, g: apply(p, x, g)).lower(*args).compile()
        call = lambda: jax.block_until_ready(compiled(*args))
    else:
        mesh = parallel.make_mesh(-1, 1)
        programs = train.programs_for(config, mesh)
        state = [programs.init(jax.random.key(0))]
        data = parallel.global_batch({"cond": rng.uniform(-1, 1, (b, s, s, 1)).astype(np.float32),
                                      "target": rng.uniform(-1, 1, (b, s, s, 1)).astype(np.float32)},
                                     parallel.batch_sharding(mesh))
        key = jax.device_put(jax.random.key(1), parallel.replicated(mesh))
        compiled = programs.train_step.lower(state[0], data, key).compile()

        def call():
            state[0], metrics = compiled(state[0], data, key)
            jax.block_until_ready((state[0], metrics))
    call()                                   # warm-up
    t0 = time.perf_counter()
    call()
    wall = time.perf_counter() - t0
    hlo = compiled.as_text()
    info = _instructions(hlo, _computations(hlo))
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            call()
        trace = next(pathlib.Path(folder).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in info:
            per_op[e["name"]] += e.get("dur", 0) / 1e6
    total = sum(per_op.values())
    print(f"{_SECTION.value}, batch {b}, {s} x {s}: {wall:.2f} s per call (untraced); traced XLA operations "
          f"{total:.2f} s in {len(per_op)} operations")
    by_kind = collections.Counter()
    for name, seconds in per_op.items():
        by_kind[info[name][0]] += seconds
    print("\n| kind | s | share |\n|---|---|---|")
    for kind, seconds in by_kind.most_common():
        print(f"| {kind} | {seconds:.3f} | {100 * seconds / total:.0f} % |")
    print(f"\n| top operations | kind | output | fuses | s | share |\n|---|---|---|---|---|---|")
    for name, seconds in per_op.most_common(_TOP.value):
        kind, shape, ops = info[name]
        print(f"| {name} | {kind} | {shape[:40]} | {' '.join(ops)[:60]} | {seconds:.3f} | "
              f"{100 * seconds / total:.1f} % |")


if __name__ == "__main__":
    app.run(main)
