"""`classicnets show kernels|features|cam|neighbours RUN ...`: pictures of what a trained net learned.

    classicnets show kernels runs/alexnet                      # conv1's kernels by tower (paper Fig. 3)
    classicnets show features runs/quick shoe.png --invert     # feature maps after each conv block
    classicnets show cam runs/quick shoe.png --class Sneaker   # Grad-CAM (needs captum)
    classicnets show neighbours runs/quick -k 6                # nearest training images (paper Fig. 4)

Each writes a PNG and a JSON of the numbers behind it (default: RUN/show/) and prints their paths.
"""

from __future__ import annotations

import argparse

from .arguments import add_checkpoint_argument


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name, help="pictures of a trained net: kernels, feature maps, Grad-CAM, nearest neighbours",
        description="Look inside a trained net. Each picture is a PNG with a JSON of its numbers beside it, "
                    "written to RUN/show/ unless --out names a .png file or a directory.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    kernels = kinds.add_parser("kernels", help="the first conv layer's kernels, by tower, with colour "
                                               "specificity (the paper's Fig. 3)")
    _common(kernels)

    features = kinds.add_parser("features", help="feature maps of an image (default: after each conv block)")
    _common(features, image=True)
    features.add_argument("--layers", type=_names, metavar="NAME,..",
                          help="module names, e.g. features.relu1,features.pool5 (default: the output of "
                               "each conv block); a wrong name lists the valid ones")
    features.add_argument("--max-maps", type=int, default=16, metavar="N",
                          help="maps drawn per layer, the most active first (default: 16)")

    cam = kinds.add_parser("cam", help="Grad-CAM of an image for the predicted or a named class (captum)")
    _common(cam, image=True)
    cam.add_argument("--class", dest="target", metavar="C",
                     help="class name or index (default: the predicted class)")
    cam.add_argument("--layer", metavar="NAME",
                     help="module name (default: the last conv block's output, before its pooling)")

    neighbours = kinds.add_parser("neighbours", help="test images beside their nearest training images in "
                                                     "the last hidden layer (the paper's Fig. 4)")
    _common(neighbours)
    neighbours.add_argument("-k", type=int, default=5, help="neighbours per test image (default: 5)")
    neighbours.add_argument("--queries", type=int, default=6, metavar="N",
                            help="test images, the first of each class (default: 6)")
    neighbours.add_argument("--limit", type=int, metavar="N",
                            help="search the first N training images only (default: all)")
    neighbours.add_argument("--dataset", help="dataset to search (default: the run's)")
    neighbours.add_argument("--data-dir", help="where the dataset lives (default: the usual places)")
    neighbours.add_argument("--batch-size", type=int, default=256, metavar="N", help="default: 256")
    neighbours.add_argument("--device", default="auto", help="cpu, cuda ... (default: auto)")
    parser.set_defaults(run=run)


def _common(parser: argparse.ArgumentParser, image: bool = False) -> None:
    add_checkpoint_argument(parser)
    if image:
        parser.add_argument("image", metavar="IMAGE", help="a PNG, JPEG, BMP, GIF or TIFF file")
        parser.add_argument("--invert", action="store_true",
                            help="invert the image first (Fashion-MNIST draws light items on black)")
    parser.add_argument("--out", metavar="PATH", help="a .png file, or a directory (default: RUN/show/)")


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more layer names separated by commas")
    return names


def run(args: argparse.Namespace) -> int:
    from .. import show

    if args.kind == "kernels":
        picture = show.kernels(args.checkpoint, out=args.out)
    elif args.kind == "features":
        picture = show.features(args.checkpoint, args.image, out=args.out, layers=args.layers,
                                max_maps=args.max_maps, invert=args.invert)
    elif args.kind == "cam":
        picture = show.cam(args.checkpoint, args.image, out=args.out, target=args.target, layer=args.layer,
                           invert=args.invert)
    else:
        picture = show.neighbours(args.checkpoint, out=args.out, k=args.k, queries=args.queries,
                                  limit=args.limit, dataset=args.dataset, data_dir=args.data_dir,
                                  batch_size=args.batch_size, device=args.device)
    import textwrap

    from ..text_tables import terminal_width

    print(textwrap.fill(_summary_line(picture.data), width=terminal_width(), subsequent_indent="  "))
    print(f"wrote {picture.png}")
    print(f"wrote {picture.json}")
    return 0


def _summary_line(data: dict) -> str:
    kind = data["kind"]
    if kind == "kernels":
        towers = data["towers"]
        if data["colour_specificity"] is None:
            return f"{data['layer']}: {data['weight_shape'][0]} kernels; colour specificity: n/a (grey input)"
        means = ", ".join(f"tower {t['tower']} {t['mean_colour_specificity']:.3f}" for t in towers)
        return f"{data['layer']}: {data['weight_shape'][0]} kernels; mean colour specificity: {means}"
    if kind == "features":
        shapes = (f"{r['layer']} {'x'.join(map(str, r['shape']))}" for r in data["layers"])
        return "layers: " + ", ".join(shapes)
    if kind == "cam":
        size = "x".join(map(str, data["layer_map_shape"]))
        return (f"Grad-CAM for {data['class']!r} (p={data['probability']:.3f}; "
                f"predicted {data['predicted']!r}) at {data['layer']} {size}")
    return (f"{len(data['queries'])} test images x {data['k']} neighbours at the {data['feature_layer']}: "
            f"{data['share_of_neighbours_in_the_query_class']:.0%} share the test image's class")
