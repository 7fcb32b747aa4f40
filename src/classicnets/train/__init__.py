"""Training any ``nn.Module``: settings (config), the loop, checkpoints, metrics and logs.

This package never imports the model zoo; :mod:`classicnets.experiment` wires models, data and training.

``classicnets.train`` is also the public function ``classicnets.train(config)``. Importing this package
(``import classicnets.train.config``) makes Python bind the name ``classicnets.train`` to the package,
replacing the function, so the package itself is callable and forwards to
:func:`classicnets.experiment.train`: both spellings keep working in any import order.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from ..experiment import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
