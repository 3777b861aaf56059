"""Moved to thinsim/model/loopfile.py with the rest of the simulated kernel.  This name is the
same module object (the host's runner and process import it from here), not a copy."""

import sys

from ..model import loopfile

sys.modules[__name__] = loopfile
