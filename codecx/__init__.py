"""codecx: an experiment framework for learned image compression research."""
__version__ = "0.1.0"
