"""zenattn's public functions. Same signatures as their ``torch.nn.functional`` twins, plus
keyword-only extras (``residual=``, ``backend=``), and ``attention`` with masks as parameters.
"""

from zenattn.functional.attention import attention, attention_probs, scaled_dot_product_attention
from zenattn.functional.norm import layer_norm, rms_norm
from zenattn.functional.rotary import apply_rotary

__all__ = ["attention", "attention_probs", "scaled_dot_product_attention", "layer_norm", "rms_norm", "apply_rotary"]
