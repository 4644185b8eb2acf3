# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Lab 1.7 · 02 — The DPO loss and its variants
#
# With the implicit reward $r = \beta \log \frac{\pi_\theta(y|x)}{\pi_{ref}(y|x)}$ and the margin
# $\delta = (\log\pi_\theta(y_w) - \log\pi_{ref}(y_w)) - (\log\pi_\theta(y_l) - \log\pi_{ref}(y_l))$:
#
# * sigmoid (DPO): $-\log\sigma(\beta\delta)$; with label smoothing ε, cDPO
# * IPO: $(\bar\delta - \frac{1}{2\beta})^2$ on the length-normalized margin
# * hinge: $\max(0, 1 - \beta\delta)$
# * robust: $\frac{-(1-\varepsilon)\log\sigma(\beta\delta) + \varepsilon\log\sigma(-\beta\delta)}{1-2\varepsilon}$
#
# `trainlab.align.losses` implements each once; the tests check them (loss and gradients) against
# TRL's trainers to 1e-5. Here: how each responds to the margin.

# %%
import torch

from trainlab.align.logprobs import chunked_token_logprobs, token_logprobs
from trainlab.align.losses import dpo_losses
from trainlab.report.plots import line_plot

delta = torch.linspace(-20, 20, 201)
zeros = torch.zeros_like(delta)
ones = torch.full_like(delta, 4.0)
curves = {}
for loss_type, smoothing in (("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)):
    out = dpo_losses(delta, zeros, zeros, zeros, beta=0.1, loss_type=loss_type, label_smoothing=smoothing,
                     chosen_len=ones, rejected_len=ones)
    curves[f"{loss_type}" + (f" ε={smoothing}" if smoothing else "")] = (delta.tolist(), out.losses.tolist())
    at0, at10 = float(out.losses[100]), float(out.losses[150])
    print(f"{loss_type:8} ε={smoothing}: loss at δ=0 {at0:.4f}, at δ=10 {at10:.4f}")
path = line_plot("dpo_losses.png", curves, title="DPO losses vs margin δ (β = 0.1)", xlabel="δ (nats)",
                 ylabel="loss")
print("plot:", path)

# %% [markdown]
# ## Log-probs without the `[B, T, V]` logits
#
# Only completion positions meet the output embedding, and optionally in chunks whose logits are
# recomputed in the backward pass. Chunked and unchunked agree (values and gradients):

# %%
torch.manual_seed(0)
h = torch.randn(300, 64, requires_grad=True)
w = torch.randn(50_000, 64, requires_grad=True)
t = torch.randint(0, 50_000, (300,))
full = token_logprobs(h, w, t, 0)
full.sum().backward()
g_full = h.grad.clone()
h.grad = None
chunked = chunked_token_logprobs(h, w, t, 64)
chunked.sum().backward()
d_logp = float((full - chunked).detach().abs().max())
print("max |Δ logp|", d_logp, " max |Δ grad|", float((g_full - h.grad).abs().max()))
print(f"logits held at once: unchunked {300 * 50_000 * 4 / 2**20:.0f} MiB, chunked {64 * 50_000 * 4 / 2**20:.0f} MiB")
