"""Lightning glue: the training module, schedules and callbacks."""
from codecx.lit.module import LitCodec
from codecx.lit.schedule import Schedule

__all__ = ["LitCodec", "Schedule"]
