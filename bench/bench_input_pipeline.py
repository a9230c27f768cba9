"""Input-pipeline throughput per task (patches per second), to compare with the training step.

  python bench/bench_input_pipeline.py [--patch_size=256] [--global_batch=8] [--batches=10]
      [--step_seconds=S] [--vem_i_input=PATH] [--vem_a_input=PATH] [--denoise_input=PATH]
      [--superres_input=PATH] [--threads=N]

Without inputs the built-in phantoms are used (clean images degraded on the fly for 2D tasks). With
--step_seconds (one training step's time at this global batch) it also prints how many patches per
second the step consumes and the pipeline's headroom over that rate (> 1: data never starves the step).
"""

import time
from concurrent.futures import ThreadPoolExecutor

from absl import app, flags

from emdiffuse_jax.data.pipeline import build_train_source

FLAGS = flags.FLAGS
flags.DEFINE_integer("patch_size", 256, "Patch side.")
flags.DEFINE_integer("global_batch", 8, "Patches per batch.")
flags.DEFINE_integer("batches", 10, "Timed batches per task (after one warm-up batch).")
flags.DEFINE_integer("z_factor", 4, "vEM z factor.")
flags.DEFINE_integer("threads", 1, "Batches built concurrently (threads), as a prefetching loader would.")
flags.DEFINE_float("step_seconds", None, "Seconds per training step at --global_batch (optional).")
for _task in ("denoise", "superres", "vem_i", "vem_a"):
    flags.DEFINE_string(f"{_task}_input", None, f"Data for {_task} (default: built-in phantoms).")


def measure(task: str) -> dict:
    t0 = time.perf_counter()
    source = build_train_source(task, getattr(FLAGS, f"{task}_input"), patch_size=FLAGS.patch_size,
                                z_factor=FLAGS.z_factor if task.startswith("vem") else None)
    build = time.perf_counter() - t0
    source.batch(0, 0, 0, 1, FLAGS.global_batch)  # warm-up
    t0 = time.perf_counter()
    steps = range(1, FLAGS.batches + 1)
    if FLAGS.threads > 1:
        with ThreadPoolExecutor(FLAGS.threads) as pool:
            list(pool.map(lambda s: source.batch(0, s, 0, 1, FLAGS.global_batch), steps))
    else:
        for s in steps:
            source.batch(0, s, 0, 1, FLAGS.global_batch)
    elapsed = time.perf_counter() - t0
    return {"task": task, "source": source.description, "build_s": build,
            "batch_ms": 1000 * elapsed / FLAGS.batches,
            "patches_per_s": FLAGS.batches * FLAGS.global_batch / elapsed}


def main(argv):
    del argv
    rows = [measure(task) for task in ("denoise", "superres", "vem_i", "vem_a")]
    print(f"input pipeline, {FLAGS.patch_size}x{FLAGS.patch_size} patches, global batch {FLAGS.global_batch}, "
          f"{FLAGS.threads} thread(s)")
    header = f"{'task':9} {'build s':>8} {'ms/batch':>9} {'patches/s':>10}"
    if FLAGS.step_seconds:
        need = FLAGS.global_batch / FLAGS.step_seconds
        header += f" {'step needs/s':>13} {'headroom':>9}"
    print(header + "  source")
    for r in rows:
        line = f"{r['task']:9} {r['build_s']:8.2f} {r['batch_ms']:9.1f} {r['patches_per_s']:10.1f}"
        if FLAGS.step_seconds:
            line += f" {need:13.2f} {r['patches_per_s'] / need:8.1f}x"
        print(line + f"  {r['source']}")


if __name__ == "__main__":
    app.run(main)
