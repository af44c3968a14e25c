"""Fine-tuning ASTRA's VQ modules: NAVQ quantizers and the differentiable N-device simulation."""
from .quantizer import BlockQuantizer, QuantOut
from .simulate import CLASS_TOKEN_MODES, SimOut, simulate

__all__ = ["CLASS_TOKEN_MODES", "BlockQuantizer", "QuantOut", "SimOut", "simulate"]
