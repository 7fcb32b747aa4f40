"""The README's pictures, docs/pictures/*.png: `make pictures` or `python -m classicnets.tools.pictures`.

Trains two small Fashion-MNIST runs under runs/pictures/ unless they are already there (minutes on a
2-core CPU), then draws one picture of each kind with the public commands:

- kernels.png: conv1 of the paper's alexnet (towers=2, quarter width, at 227 px), grouped by tower;
- features.png: that net's feature maps of scikit-image's cat photo (read as predict reads it: grey, 227 px);
- cam.png: Grad-CAM of the quick run for the first Sneaker of the Fashion-MNIST test split;
- neighbours.png: the quick run's test images beside their 5 nearest training images (the paper's Fig. 4);
- summary.png: `classicnets summary alexnet --plot`.

The PNGs are re-encoded with a 256-colour palette so each stays well under 200 KB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Each run: the `train` flags. The quick recipe as `make demo` runs it, on fewer images; the paper's net
# with its two towers, at quarter width on 4,096 images, xavier init (the paper's N(0, 0.01) needs many
# epochs before it leaves chance level) in fp32.
RUNS = {
    "quick": ["--recipe", "quick", "--subset", "8192", "--epochs", "2"],
    "alexnet": ["--recipe", "quick", "--model", "alexnet", "--model-options", "towers=2,width_mult=0.25",
                "--image-size", "227", "--init", "xavier", "--lr", "0.001", "--precision", "fp32",
                "--no-channels-last", "--subset", "4096", "--epochs", "2"],
}


def train_missing_runs(root: Path) -> dict[str, Path]:
    from ..cli import main

    runs = {}
    for name, flags in RUNS.items():
        run = root / name
        if not (run / "best").is_dir():
            if main(["train", *flags, "--out", str(run), "--overwrite"]) != 0:
                raise SystemExit(f"training {run} failed")
        runs[name] = run
    return runs


def sample_images(root: Path) -> tuple[Path, Path]:
    """scikit-image's cat as a PNG, and the first Sneaker of Fashion-MNIST's test split as a PNG."""
    import numpy as np
    from PIL import Image
    from skimage import data as samples

    import classicnets

    cat = root / "chelsea.png"
    Image.fromarray(samples.chelsea()).save(cat)
    test = classicnets.load_dataset("fashion-mnist", "test")
    index = int(np.flatnonzero(np.asarray(test.labels) == test.classes.index("Sneaker"))[0])
    sneaker = root / "sneaker.png"
    Image.fromarray(np.asarray(test.images[index]).reshape(28, 28)).save(sneaker)
    return cat, sneaker


def draw(out: Path, root: Path) -> list[Path]:
    from .. import show
    from ..cli import main

    out.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    runs = train_missing_runs(root)
    cat, sneaker = sample_images(root)
    pictures = [
        show.kernels(runs["alexnet"], out=out / "kernels.png").png,
        show.features(runs["alexnet"], cat, out=out / "features.png", max_maps=9).png,
        show.cam(runs["quick"], sneaker, out=out / "cam.png").png,
        show.neighbours(runs["quick"], out=out / "neighbours.png", k=5, queries=5).png,
    ]
    if main(["summary", "alexnet", "--plot", str(out / "summary.png")]) != 0:
        raise SystemExit("summary --plot failed")
    pictures.append(out / "summary.png")
    for png in pictures:
        _shrink(png)
    return pictures


def _shrink(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as image:
        palette = image.convert("RGB").quantize(256)
    palette.save(png, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/pictures"), help="default: docs/pictures")
    parser.add_argument("--runs", type=Path, default=Path("runs/pictures"),
                        help="where the runs are trained (kept for the next time; default: runs/pictures)")
    args = parser.parse_args(argv)
    for png in draw(args.out, args.runs):
        print(f"{png} ({png.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
