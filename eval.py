"""Thin shim: `python eval.py [overrides]` (see codecx/eval_main.py and conf/eval.yaml)."""
from codecx.eval_main import main

if __name__ == "__main__":
    main()
