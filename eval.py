"""Thin shim: `python eval.py [overrides]` (see codecx/eval/main.py and conf/eval.yaml)."""
from codecx.eval.main import main

if __name__ == "__main__":
    main()
