"""codecx: an experiment framework for learned image compression research."""
import warnings as _warnings

__version__ = "0.1.0"

# CompressAI imports torch_geometric, whose import-time torch.jit.script calls warn on every run
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
