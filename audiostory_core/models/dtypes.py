"""The dtype keyword for ``from_pretrained``/``from_config``, across transformers versions."""
from __future__ import annotations

import torch


def dtype_kwarg(dtype: torch.dtype) -> dict:
    """transformers >= 4.56 renamed ``torch_dtype`` to ``dtype``."""
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}
