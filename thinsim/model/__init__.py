"""The simulated kernel: persistent-data and dm-thin (btree.py, space_map.py,
transaction.py, metadata.py, pool.py, thin.py), the device-mapper core (dm.py) and its
targets (dm_thin.py, dm_linear.py), loop (loop.py, loopfile.py), the block layer
(devices.py: the devices and their one lookup; blockio.py: I/O and queue limits).

Importing the package loads the targets' modules, which register with the core, as the
kernel's module_init does (dm_register_target): every user of the core finds them.
"""

from . import dm_linear, dm_thin  # noqa: F401 -- they register their target types
