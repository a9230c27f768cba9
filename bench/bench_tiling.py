"""Joint vs independent tiled sampling, as a user meets them: seams in samples and std maps, peak memory.

1. Trains the tiny EMDiffuse-n (`launch/train.py --config=configs/emdiffuse_n.py:tiny`, built-in phantoms)
   and the tiny vEMDiffuse-i (`configs/vemdiffuse_i.py:tiny`, the FIB-SEM stack) in --workdir (reused
   when present).
2. Restores a noisy 128 x 128 crop of a held-out FIB-SEM slice (Poisson-Gaussian noise, the project's
   default degradation) with `launch/predict.py`, tile 32, overlap 8, K = 4, --save_samples, once per
   tiling mode, and prints: the spread ratio (mean per-pixel std of the saved samples in the tile overlap
   bands over that in the tile interiors; 1 = no seams), and the per-tile mean of the std map (its range
   shows a tile grid).
3. Runs `launch/isotropic.py --sampler=dpm` with the tiny vEMDiffuse-i on the two 256 x 256 mouse-liver
   demo slices, tile and overlap left at their defaults, and prints its wall time, peak memory (max RSS)
   and output slice count.
4. Peak memory of `launch/predict.py` (dpm, K = 2) per tile size on a whole 250 x 250 slice, with the planner's
   estimate from the log, and a figure (sample, mean, std in both modes) to --figure.

    python bench/bench_tiling.py --workdir=DIR [--data=../shared/data] [--sampler=dpm] [--steps=20]
        [--memory_tiles=32,64,128] [--figure=docs/figures/tiling.png]

Prints a table; name the CPU (`lscpu`) with any figure you quote.
"""

import json
import pathlib
import re
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the models and outputs.")
_DATA = flags.DEFINE_string("data", str(ROOT.parent / "shared" / "data"), "The shared real-data folder.")
_SAMPLER = flags.DEFINE_enum("sampler", "dpm", ["ddpm", "ddim", "dpm"], "Sampler of the 2D comparison.")
_STEPS = flags.DEFINE_integer("steps", 20, "Sampler steps of the 2D comparison.")
_MEMORY_TILES = flags.DEFINE_list("memory_tiles", ["32", "64", "128"], "Tile sizes of the memory table.")
_FIGURE = flags.DEFINE_string("figure", "", "Write the side-by-side figure (PNG) here.")
flags.mark_flags_as_required(["workdir"])


def run(cmd, log_path):
    """Runs a command under /usr/bin/time; returns (wall s, peak RSS GiB, combined output)."""
    t0 = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M"] + [str(c) for c in cmd],
                            capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = result.stdout + result.stderr
    pathlib.Path(log_path).write_text(text)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed (see {log_path}):\n{text[-2000:]}")
    rss = int(re.findall(r"MAXRSS_KB=(\d+)", text)[-1]) / 1024 ** 2
    return wall, rss, text


def train(workdir, config):
    if not (workdir / "checkpoints").exists():
        run([sys.executable, ROOT / "launch" / "train.py", f"--config={ROOT / 'configs' / config}:tiny",
             f"--workdir={workdir}"], workdir.parent / f"{workdir.name}_train.log")
    return workdir


def main(argv):
    del argv
    import numpy as np
    import tifffile

    from emdiffuse_jax.data import degrade
    from emdiffuse_jax.diffusion import multidiffusion

    work = pathlib.Path(_WORKDIR.value)
    work.mkdir(parents=True, exist_ok=True)
    data = pathlib.Path(_DATA.value)
    stack = tifffile.imread(data / "fibsem-medulla-250.tif")
    model_n = train(work / "tiny_n", "emdiffuse_n.py")
    model_i = train(work / "tiny_vem_i", "vemdiffuse_i.py")

    clean = stack[245, :128, :128]  # the last slices are held out of every training run here
    rng = np.random.default_rng(0)
    noisy = degrade.from_unit(degrade.parse_degradation(None, "denoise")(degrade.to_unit(clean, 0, 255), rng),
                              np.uint8)
    tifffile.imwrite(work / "noisy128.tif", noisy)
    grid = multidiffusion.tile_grid((128, 128), 32, 8)
    cover = grid.coverage()
    print(f"2D: noisy 128 x 128 FIB-SEM crop (z 245), tiny EMDiffuse-n, tile 32, overlap 8, K = 4, "
          f"{_SAMPLER.value} {_STEPS.value} steps")
    print(f"{'tiling':>12} {'spread ratio':>13} {'tile mean std min':>18} {'max':>7} {'wall s':>7} {'peak GiB':>9}")
    panels = {}
    for mode in ("joint", "independent"):
        out = work / f"pred_{mode}"
        if (out / "report.json").exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        wall, rss, _ = run([sys.executable, ROOT / "launch" / "predict.py", "--task=denoise",
                            f"--checkpoint={model_n}", f"--input={work / 'noisy128.tif'}", f"--output={out}",
                            "--num_samples=4", f"--sampler={_SAMPLER.value}", f"--steps={_STEPS.value}",
                            "--tile=32", "--overlap=8", f"--tiling={mode}", "--save_samples"], work / f"{mode}.log")
        samples = tifffile.imread(out / "noisy128_samples.tif").astype(np.float64) / 255.0
        spread = samples.std(axis=0, ddof=1)
        ratio = spread[cover > 1].mean() / spread[cover == 1].mean()
        std = tifffile.imread(out / "noisy128_std.tif")
        tile_means = [std[y:y + 32, x:x + 32].mean() for y, x in grid.origins]
        print(f"{mode:>12} {ratio:>13.3f} {min(tile_means):>18.4f} {max(tile_means):>7.4f} {wall:>7.1f} "
              f"{rss:>9.2f}")
        panels[mode] = (samples[0], tifffile.imread(out / "noisy128_mean.tif") / 255.0, std)

    out = work / "iso"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    demo = data / "emdiffuse-demo"
    pair = np.stack([tifffile.imread(demo / f"mouse_liver_demo_{i}.tif") for i in (0, 1)])
    tifffile.imwrite(work / "liver_pair.tif", pair, photometric="minisblack")
    wall, rss, text = run([sys.executable, ROOT / "launch" / "isotropic.py", f"--checkpoint={model_i}",
                           f"--input={work / 'liver_pair.tif'}", "--z_factor=6", f"--output={out}",
                           "--sampler=dpm"], work / "iso.log")
    report = json.loads((out / "report.json").read_text())
    plan = re.findall(r"memory plan: (.*)", text)
    print(f"\nisotropic: 2 x 256 x 256 mouse-liver slices, tiny vEMDiffuse-i, dpm 20 steps, K = 2, default tile "
          f"{report['settings']['tile']} / overlap {report['settings']['overlap']}: {wall:.1f} s, peak "
          f"{rss:.2f} GiB, output {report['output_shape']} ({len(tifffile.imread(out / 'mean.tif'))} mean, "
          f"{len(tifffile.imread(out / 'std.tif'))} std slices); plan: {plan[-1] if plan else '-'}")

    crop = work / "slice250.tif"
    tifffile.imwrite(crop, stack[245])
    print(f"\npeak memory of launch/predict.py (joint, dpm 2 steps, K = 2, 250 x 250 image, tiny EMDiffuse-n)")
    print(f"{'tile':>5} {'rows/device':>12} {'planned GiB':>12} {'peak RSS GiB':>13} {'wall s':>7}")
    for tile in (int(t) for t in _MEMORY_TILES.value):
        out = work / f"mem_{tile}"
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        wall, rss, text = run([sys.executable, ROOT / "launch" / "predict.py", "--task=denoise",
                               f"--checkpoint={model_n}", f"--input={crop}", f"--output={out}", "--num_samples=2",
                               "--sampler=dpm", "--steps=2", f"--tile={tile}"], work / f"mem_{tile}.log")
        found = re.findall(r"memory plan: (\d+) row\(s\).*?about ([\d.]+) GiB", text)
        rows, planned = found[-1] if found else ("-", "-")
        print(f"{tile:>5} {rows:>12} {planned:>12} {rss:>13.2f} {wall:>7.1f}")

    if _FIGURE.value:
        from PIL import Image, ImageDraw

        def to8(a, hi):
            return np.clip(np.asarray(a) / hi * 255, 0, 255).astype(np.uint8)

        scale, gap = 2, 8
        tiles = []
        for mode in ("joint", "independent"):
            sample, mean, std = panels[mode]
            tiles.append([to8(sample, 1.0), to8(mean, 1.0), to8(std, max(p[2].max() for p in panels.values()))])
        size = 128 * scale
        canvas = Image.new("L", (3 * size + 2 * gap, 2 * size + gap + 40), 255)
        draw = ImageDraw.Draw(canvas)
        for r, row in enumerate(tiles):
            for c, img in enumerate(row):
                canvas.paste(Image.fromarray(img).resize((size, size), Image.NEAREST),
                             (c * (size + gap), 20 + r * (size + gap)))
        draw.text((4, 4), "sample | mean | std  (top: joint, bottom: independent; tile 32, overlap 8)", fill=0)
        pathlib.Path(_FIGURE.value).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(_FIGURE.value)
        print(f"\nfigure: {_FIGURE.value}")


if __name__ == "__main__":
    app.run(main)
