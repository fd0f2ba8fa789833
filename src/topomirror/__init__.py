"""topomirror: adaptive network topology mirroring."""

__version__ = "0.1.0"
