"""Training memory: estimate it from formulas, measure it on any device, profile a step.

* :mod:`trainlab.memory.estimate`: bytes of parameters, gradients, optimizer states, activations
  (Korthikanti et al. 2022 and our decoder's exact count) and logits; ZeRO stages (Rajbhandari et
  al. 2020).
* :mod:`trainlab.memory.measure`: the one memory meter. A training step (the loop's own
  ``optimizer_step``, observed through hooks) measured on CPU (exact accounting of live tensors)
  and CUDA (the allocator's statistics); a timeline over load, forward, backward and optimizer
  step; a memory cap that turns "out of memory" into a recorded result; the bytes autograd saves
  for backward (`SavedTensorBytes`, `training_memory`), and the process's peak RSS for whole runs
  (`PeakMemory`, from :mod:`trainlab.memory.rss`).
* :mod:`trainlab.memory.profile`: torch.profiler tables and traces, the CUDA memory snapshot.
* :mod:`trainlab.memory.advisor`: the technique decision tree with estimated memory per option.
"""

from __future__ import annotations
