"""Evaluation, in one package (issue 30 item 3): checkpoints saved and loaded (`checkpoint`), the
periodic evaluation during training (`callback`)."""
