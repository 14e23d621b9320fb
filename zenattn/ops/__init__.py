"""torch.library registrations (namespace ``zenattn``): one op per kernel entry point.

Importing this package registers every op; see each module's docstring for the schemas.
"""

from zenattn.ops import norm  # noqa: F401  (registers zenattn::layer_norm_* and rms_norm_*)
from zenattn.ops import attention  # noqa: F401  (registers zenattn::attention_fwd and attention_bwd)
from zenattn.ops import rotary  # noqa: F401  (registers zenattn::rotary)
