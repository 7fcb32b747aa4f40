"""The model zoo. Importing a family module registers its builders with :mod:`classicnets.registry`."""

from . import alexnet, cuda_convnet, googlenet, nin, resnet, vgg  # noqa: F401  (imported to register)
