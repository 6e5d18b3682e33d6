"""cai: turn a written constitution into preference data and an aligned model."""

__version__ = "0.1.0"
