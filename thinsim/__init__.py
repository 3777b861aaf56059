"""thinsim: Linux dm-thin thin provisioning, simulated faithfully or run for real."""

__version__ = "0.1.0"


def load_ipython_extension(ipython) -> None:
    """``%load_ext thinsim``: the ``%%thinsim`` cell magic of the labs (thinsim/notebook.py)."""
    from .notebook import load_ipython_extension

    load_ipython_extension(ipython)
