"""`python -m classicnets ...`, the form torchrun launches.

    torchrun --nproc_per_node=2 -m classicnets train ...
"""

from classicnets.cli import main

raise SystemExit(main())
