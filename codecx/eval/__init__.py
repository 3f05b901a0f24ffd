"""Evaluation from real bitstreams, in one package (issue 30 item 3); each module imports only
those listed before it:

- `checkpoint`: checkpoints saved (atomic, never non-finite; last / best; run-dir lock; resume)
  and loaded (`weights_only=True`)
- `load`: a codec from a checkpoint or config dicts, ready to code; its container fingerprint
- `code`: one image through a codecx file and its per-image measurements
- `results`: results.json / per_image.csv (CompressAI's layout), the summary table, failed-job records
- `loop`: images through a codec, one RD point per codec (`evaluate_codec`, `evaluate_codecs`)
- `runs`, `report`: the runs of a multirun grouped, and the sweep report (`build_report`)
- `callback`: `RealBitstreamEval`, a thin caller of the loop during training
- `sweep`: the Hydra callback that writes a multirun's report
- `main`: `codecx eval` / `python eval.py` (Hydra)
"""
