"""Training any ``nn.Module``: settings (config), the loop, checkpoints, metrics, logs, distribution.

This package never imports the model zoo; :mod:`classicnets.experiment` wires models, data and training
and is what the public ``classicnets.train(config)`` calls. (The package is named ``training`` so that
importing it never rebinds the name ``classicnets.train``, the function.)
"""
