"""Real bitstreams: rANS for scalar symbols (and, later, categorical coders for lattices)."""
from codecx.coding.rans import RansStreamDecoder, RansStreamEncoder

__all__ = ["RansStreamEncoder", "RansStreamDecoder"]
