"""The simulated host: the simulated kernel (devices.py, kernel.py: the device-mapper core
and loop, blockio.py: the block layer, dm_thin.py and dm_linear.py: the targets) and what
runs on it (tools/, run.py, server.py, sandbox.py).

Importing the package loads the targets' modules, which register with the core, as the
kernel's module_init does (dm_register_target): every user of the core finds them.
"""

from . import dm_linear, dm_thin  # noqa: F401 -- they register their target types
