"""The README's pictures, docs/pictures/*.png: `make pictures` or `python -m classicnets.tools.pictures`.

Trains a small Fashion-MNIST run under runs/pictures/quick unless it is already there (the quick recipe on
4,096 images for one epoch: about half a minute on a 2-core CPU), then draws one picture of each kind with
the public commands:

- kernels.png: its conv1 kernels (one tower; `show kernels` groups the paper's towers=2 net by tower);
- features.png: its feature maps of scikit-image's cat photo (read as predict reads it: grey, 28 px);
- cam.png: its Grad-CAM for the first Sneaker of the Fashion-MNIST test split;
- neighbours.png: test images beside their 5 nearest training images (the paper's Fig. 4);
- summary.png: `classicnets summary alexnet --plot`.

The PNGs are re-encoded with a 256-colour palette so each stays well under 200 KB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Each run: the `train` flags. The quick recipe as `make demo` runs it, on fewer images. (The paper's
# two-tower alexnet is not drawn: at quarter width on 4,096 images it stays at chance for the first epochs
# with the quick, d2l and paper-init recipes alike, so its kernels would still be the initial noise.)
RUNS = {
    "quick": ["--recipe", "quick", "--subset", "4096", "--epochs", "1"],
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
        show.kernels(runs["quick"], out=out / "kernels.png").png,
        show.features(runs["quick"], cat, out=out / "features.png", max_maps=9).png,
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
