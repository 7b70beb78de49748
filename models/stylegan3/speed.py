"""Run-time speed options of the synthesis layers. None of them changes the saved weights or the
model card; all are off on the CPU, where the plain float32 path is the calibrated one.

- ``sign_mask_lrelu``: the filtered leaky ReLU keeps a uint8 code per temporary value for its backward
  pass instead of recomputing the layer (:mod:`models.stylegan3.filtered_lrelu`); training only.
- ``conv_dtype``: the modulated convolution computes in this dtype (e.g. ``torch.bfloat16``), the
  rest of the layer in the activations' dtype.
- ``channels_last``: the convolution's input in NHWC order, which cuDNN's tensor-core kernels prefer.
- ``compile_filters``: the filter chain (up-sample, leaky ReLU, clamp, down-sample) through
  ``torch.compile``, which fuses the pointwise work into the filters' loops. It compiles on the CPU
  too (gcc is needed; about 40 s per layer geometry on these 2 cores), so it is meant for long runs.
  It is not combined with ``sign_mask_lrelu``, whose backward pass is hand-written.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from models.stylegan3.filtered_lrelu import filtered_lrelu_sign_mask
from models.stylegan3.filters import filtered_lrelu_reference

CONV_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SpeedOptions:
    sign_mask_lrelu: bool = False
    conv_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile_filters: bool = False

    def __post_init__(self):
        if self.sign_mask_lrelu and self.compile_filters:
            raise ValueError("sign_mask_lrelu and compile_filters are alternatives: the sign-mask backward pass is hand-written and not compiled")
        if self.conv_dtype not in CONV_DTYPES.values():
            raise ValueError(f"conv_dtype must be one of {', '.join(CONV_DTYPES)}, got {self.conv_dtype}")

    @classmethod
    def from_dict(cls, d: dict) -> "SpeedOptions":
        """From JSON values, e.g. ``{"sign_mask_lrelu": true, "conv_dtype": "bfloat16"}``."""
        d = dict(d)
        unknown = set(d) - {"sign_mask_lrelu", "conv_dtype", "channels_last", "compile_filters"}
        if unknown:
            raise ValueError(f"unknown speed option(s) {', '.join(sorted(unknown))}; known: sign_mask_lrelu, conv_dtype, channels_last, compile_filters")
        dtype = d.pop("conv_dtype", None)
        if dtype is not None and dtype not in CONV_DTYPES:
            raise ValueError(f"conv_dtype must be one of {', '.join(CONV_DTYPES)}, got {dtype!r}")
        return cls(conv_dtype=CONV_DTYPES.get(dtype) if dtype else None, **{k: bool(v) for k, v in d.items()})

    @classmethod
    def for_device(cls, device: torch.device | str) -> "SpeedOptions":
        """Defaults: on CUDA the sign mask and channels_last (precision is left to the runner's
        autocast); elsewhere nothing."""
        if torch.device(device).type == "cuda":
            return cls(sign_mask_lrelu=True, channels_last=True)
        return cls()

    def filtered_lrelu(self):
        """The filter-chain function these options select."""
        if self.sign_mask_lrelu:
            return filtered_lrelu_sign_mask
        if self.compile_filters:
            return compiled_filtered_lrelu()
        return filtered_lrelu_reference


@functools.cache
def compiled_filtered_lrelu():
    """``torch.compile`` of the reference chain, made once per process (it recompiles per geometry)."""
    return torch.compile(filtered_lrelu_reference, dynamic=False)
