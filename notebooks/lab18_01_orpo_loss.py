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
# # Lab 1.8 · 01 — ORPO's odds ratio
#
# ORPO (Hong et al., 2024) adds to the NLL of the preferred answer a penalty on the log odds ratio
# of preferred over dispreferred, computed from *length-normalized* log-probabilities
# $\bar p = \frac{1}{|y|}\log \pi(y|x)$ and $\mathrm{odds}(p) = p/(1-p)$:
#
# $$L = \mathrm{NLL}(y_w) - \lambda \log\sigma\Big(\log\frac{\mathrm{odds}(e^{\bar p_w})}
# {\mathrm{odds}(e^{\bar p_l})}\Big), \qquad \log \mathrm{odds}(e^{\bar p}) = \bar p - \log(1 - e^{\bar p}).$$
#
# No reference model is needed. $\log(1-e^x)$ is computed stably (`log1mexp`): naively it returns
# `-inf` as $x \to 0^-$.

# %%
import torch

from trainlab.align.losses import log1mexp, orpo_losses, simpo_losses

x = torch.tensor([-1e-8, -1e-4, -0.1, -0.69, -3.0, -40.0])
print("naive  ", torch.log(1 - torch.exp(x)).tolist())
print("stable ", log1mexp(x).tolist())

# %%
chosen = torch.tensor([-0.2, -1.0, -2.0])
rejected = torch.tensor([-2.0, -1.0, -0.2])
nll = -chosen
out = orpo_losses(chosen, rejected, nll, lam=0.1)
print("ORPO loss", out.losses.tolist())
print("log σ(log odds ratio)", out.extra["log_odds_ratio"].tolist())
simpo = simpo_losses(chosen, rejected, beta=2.0, gamma=0.5)
print("SimPO loss (β=2, γ=0.5)", simpo.losses.tolist())
