"""Thin shim: `python train.py [overrides]` (see codecx/train.py and conf/)."""
from codecx.train import main

if __name__ == "__main__":
    main()
