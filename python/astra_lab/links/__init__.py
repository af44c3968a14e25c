"""Links between ranks: ``sim`` (modelled), ``netns`` (shaped real TCP), ``real`` (unshaped); their faults:
random loss (:mod:`.loss`) and rate schedules (:mod:`.schedule`)."""
from .loss import TcpLoss, loss_permille
from .netns import NetnsError, NetnsLink, burst_bytes, require_netns, require_nft
from .schedule import RateSchedule, ScheduleThread
from .sim import SimLinkTransport

MODES = ("sim", "netns", "real")

__all__ = ["MODES", "NetnsError", "NetnsLink", "RateSchedule", "ScheduleThread", "SimLinkTransport", "TcpLoss",
           "burst_bytes", "loss_permille", "require_netns", "require_nft"]
