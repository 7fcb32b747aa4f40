"""resnet: builders are registered here (see alexnet.py for the layout)."""
