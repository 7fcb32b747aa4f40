"""Pictures of what a trained net learned, each a PNG with the numbers behind it as JSON beside it.

    >>> import classicnets.show as show
    >>> show.kernels("runs/alexnet")                      # conv1's kernels by tower, colour specificity
    >>> show.features("runs/quick", "shoe.png")           # feature maps after each conv block
    >>> show.cam("runs/quick", "shoe.png", target="Bag")  # Grad-CAM for a class (default: the predicted one)
    >>> show.neighbours("runs/quick", k=5)                # test images beside their nearest training images

Each takes a run directory, a checkpoint or an ``nn.Module`` and returns a :class:`Picture` (paths, data).
Pictures go to the run's ``show/`` unless ``out`` names a .png file or a directory.
"""

from .cam import cam
from .common import Picture
from .features import features
from .kernels import kernels
from .neighbours import neighbours

__all__ = ["Picture", "cam", "features", "kernels", "neighbours"]
