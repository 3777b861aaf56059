"""thinsim: Linux dm-thin thin provisioning, simulated faithfully or run for real."""

__version__ = "0.1.0"
