"""Links between ranks: ``sim`` (modelled), ``netns`` (shaped real TCP), ``real`` (unshaped)."""
from .netns import NetnsError, NetnsLink, burst_bytes, require_netns
from .sim import SimLinkTransport

MODES = ("sim", "netns", "real")

__all__ = ["MODES", "NetnsError", "NetnsLink", "SimLinkTransport", "burst_bytes", "require_netns"]
