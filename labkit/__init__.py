"""labkit: an interactive lab on discriminative feature geometry in deep networks."""

__version__ = "0.2.0"
