"""Number formats, dynamic loss scaling and the autocast policy.

* :mod:`trainlab.precision.formats`: the facts of fp32, fp16, bf16, fp8 (bits, range, precision)
  and how much of a real gradient fp16 flushes to zero with and without loss scaling.
* :mod:`trainlab.precision.scaler`: `DynamicLossScaler`, the loss scaler the training loop uses for
  fp16 (the same decisions as ``torch.amp.GradScaler``).

The autocast context itself lives in :mod:`trainlab.train.amp`, beside the loop that uses it.
"""

from __future__ import annotations

from trainlab.precision.formats import FORMATS, FloatFormat, format_table, get_format, underflow_report
from trainlab.precision.scaler import DynamicLossScaler

__all__ = ["FORMATS", "DynamicLossScaler", "FloatFormat", "format_table", "get_format", "underflow_report"]
