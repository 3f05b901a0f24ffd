"""codecx's Hydra config groups, shipped in the package: `CONF_DIR` is their folder (the one
definition; train.py, eval.py, the CLI and the backbone registry read it)."""
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent)
