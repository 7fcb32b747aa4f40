"""Training any ``nn.Module``: settings (config), the loop, checkpoints, metrics and logs.

This package never imports the model zoo; :mod:`classicnets.experiment` wires models, data and training.
"""
