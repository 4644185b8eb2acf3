"""Prefix sharing: a preference pair's prompt goes through the model once, not twice.

A pair is ``(x, y_w, y_l)``: the chosen and the rejected rows share the prompt ``x`` (and often a
few more tokens). Run as two rows, as TRL's trainers do, the model computes the prompt's hidden
states twice. Packed as one row ``[x, y_w, y_l]`` with a mask in which ``y_l`` attends to ``x``
and to itself but not to ``y_w``, and with ``y_l``'s position ids restarting where ``x`` ends,
every token sees exactly the context it sees in its own row, so the log-probabilities are the
same (to float rounding) and the prompt is computed once (Wang & Hegde, 2024, "Accelerating
Direct Preference Optimization with Prefix Sharing", arXiv:2410.20305). For a pair with a
shared prefix of ``s`` tokens and rows of ``n_w`` and ``n_l`` tokens the model processes

    n_w + n_l − s   tokens instead of   n_w + n_l

(about a third fewer with TRL's default 512-token prompts and 256-token completions; more for
long prompts), with the same saving in activation memory. The mask, for packed positions
``q`` (query) and ``k`` (key) with segments 0 (shared), 1 (chosen rest), 2 (rejected rest)::

    allowed(q, k) = k ≤ q  and  (seg(k) = 0  or  seg(k) = seg(q))  and  k is not padding

(padding queries attend to themselves, so no softmax row is empty). The hidden state that
predicts the rejected row's first own token is the last shared one, at packed position ``s − 1``.

Used by the pair objectives (DPO, IPO, SimPO, ORPO, RPO), the cached reference log-probs and the
preference evaluation, whenever the model accepts a custom 4D attention mask
(`custom_mask_limit`: transformers models with ``sdpa`` or ``eager`` attention and no sliding
window shorter than the packed row; trainlab's decoder with the automatic or SDPA backend);
otherwise, for batches whose mask would pass `MAX_MASK_ELEMENTS`, and with
``align.share_prefix=false``, the pair runs as two rows (`trainlab.align.logprobs.sequence_logps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.align.logprobs import SequenceLogps, score_hidden, sequence_logps
from trainlab.train.token_logprobs import token_logprobs

#: The largest packed mask ``B·L·L`` built (128 Mi booleans, e.g. 8 rows of 4,096); longer batches run as two
#: rows per pair, where the mask would cost more than the prompt's activations save on small models.
MAX_MASK_ELEMENTS = 1 << 27


def custom_mask_limit(model: Any) -> int:
    """The longest packed row ``model`` attends to correctly given a 4D mask; 0: not supported."""
    fn = getattr(model, "custom_mask_max_length", None)
    return int(fn()) if callable(fn) else 0


@dataclass
class PackedPairs:
    """``B`` pairs packed as ``[B, L]`` rows (see the module docstring).

    ``input_ids``/``position_ids`` ``[B, L]``; ``allowed`` ``[B, 1, L, L]`` (bool, True = attend);
    ``shared`` ``[B]``: shared prefix lengths; ``lengths`` ``[B]``: packed lengths; ``chosen_len`` ``[B]``:
    the chosen rows' lengths (where each rejected row's own tokens start); `packed_position` maps a
    position of an original row to its packed one.
    """

    input_ids: Tensor
    position_ids: Tensor
    allowed: Tensor
    shared: Tensor
    lengths: Tensor
    chosen_len: Tensor

    def packed_position(self, rows: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(pair, packed position) of each (original row, position): rows ``0..B-1`` chosen, ``B..2B-1``
        rejected."""
        b = self.input_ids.shape[0]
        pair = rows % b
        rejected = rows >= b
        s = self.shared[pair]
        own = rejected & (positions >= s)
        return pair, torch.where(own, self.chosen_len[pair] + positions - s, positions)


def pack_pairs(input_ids: Tensor, attention_mask: Tensor | None) -> PackedPairs | None:
    """Pack ``[2B, T]`` rows (chosen ``0..B-1``, rejected ``B..2B-1``, right-padded) into ``[B, L]``.

    None when nothing is shared (no pair has a common first token) or the rows are not right-padded.
    """
    r, t = input_ids.shape
    b = r // 2
    device = input_ids.device
    if attention_mask is None:
        lengths = torch.full((r,), t, dtype=torch.long, device=device)
    else:
        keep = attention_mask.bool()
        lengths = keep.sum(dim=1)
        if not bool((keep == (torch.arange(t, device=device)[None, :] < lengths[:, None])).all()):
            return None  # left padding or holes: the packed layout assumes tokens first
    nc, nr = lengths[:b], lengths[b:]
    pos = torch.arange(t, device=device)
    same = (input_ids[:b] == input_ids[b:]) & (pos[None, :] < torch.minimum(nc, nr)[:, None])
    # longest common prefix, leaving each side at least one token of its own
    shared = torch.minimum(same.long().cumprod(dim=1).sum(dim=1), torch.minimum(nc, nr) - 1).clamp(min=0)
    if not bool((shared > 0).any()):
        return None
    packed_len = nc + nr - shared
    width = -(-int(packed_len.max()) // 8) * 8  # a multiple of 8, as fused attention kernels align masks
    if b * width * width > MAX_MASK_ELEMENTS:
        return None
    j = torch.arange(width, device=device)[None, :]  # [1, L]
    in_chosen = j < nc[:, None]
    real = j < packed_len[:, None]
    src_pos = torch.where(in_chosen, j, j - nc[:, None] + shared[:, None]).clamp(0, t - 1)
    pair = torch.arange(b, device=device)[:, None]
    src_row = torch.where(in_chosen, pair, pair + b)
    ids = torch.where(real, input_ids[src_row, src_pos], torch.zeros_like(src_pos))
    positions = torch.where(real, src_pos, torch.zeros_like(src_pos))
    # segments: 0 shared, 1 chosen's own, 2 rejected's own, 3 padding
    seg = torch.where(j < shared[:, None], 0, torch.where(in_chosen, 1, torch.where(real, 2, 3)))
    q, k = seg[:, :, None], seg[:, None, :]
    causal = j[0][:, None] >= j[0][None, :]  # [L, L]
    allowed = causal[None] & ((k == 0) | (k == q)) & (k != 3)
    allowed |= torch.eye(width, dtype=torch.bool, device=device)[None]
    return PackedPairs(input_ids=ids, position_ids=positions, allowed=allowed[:, None], shared=shared,
                       lengths=packed_len, chosen_len=nc)


def pair_sequence_logps(model: Any, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None, *,
                        chunk_size: int = 0, share_prefix: bool = True,
                        fused_weights: Tensor | None = None) -> SequenceLogps:
    """`sequence_logps` of a preference batch (rows ``0..B-1`` chosen, ``B..2B-1`` rejected), with
    each pair's common prefix computed once where the model supports it (see the module docstring).

    The result is row for row the one `sequence_logps` returns (same order of scored tokens).
    """
    packed = None
    if share_prefix and input_ids.shape[0] % 2 == 0:
        limit = custom_mask_limit(model)
        if limit > 0:
            packed = pack_pairs(input_ids, attention_mask)
            if packed is not None and packed.input_ids.shape[1] > limit:
                packed = None
    if packed is None:
        return sequence_logps(model, input_ids, labels, attention_mask, chunk_size=chunk_size,
                              fused_weights=fused_weights)
    hidden = model.hidden_states(packed.input_ids, attention_mask=packed.allowed,
                                 position_ids=packed.position_ids)  # [B, L, D]
    mask = labels[:, 1:] != -100  # [R, T-1]: position t-1 of a row predicts its label at t
    rows, prev = mask.nonzero(as_tuple=True)
    pair, at = packed.packed_position(rows, prev)
    return score_hidden(hidden[pair, at], labels[:, 1:][mask], rows, mask, model.output_embedding(), chunk_size,
                        fused_weights=fused_weights)


def group_token_logps(model: Any, input_ids: Tensor, attention_mask: Tensor, score_mask: Tensor, *,
                      chunk_size: int = 0) -> Tensor | None:
    """Per-token log-probs ``[N, C]`` of completions that share prompts in groups (GRPO, RLOO), each group
    packed as one row ``[prompt, c_1, ..., c_k]``; None where that does not apply (then score the rows).

    ``input_ids``/``attention_mask`` ``[N, P + C]``: left-padded prompts, then right-padded completions;
    consecutive rows with the same prompt columns form a group. ``c_j`` attends to the prompt and to
    itself (segment ``j``), its positions continue the prompt's, so each token sees what it sees in its
    own row (the module docstring's mask with ``k`` instead of two own segments). None when the model
    takes no custom mask, no two consecutive rows share a prompt, a prompt is empty, a completion's
    attention is not a prefix, or the packed mask would pass `MAX_MASK_ELEMENTS`.
    """
    n, t = input_ids.shape
    c = score_mask.shape[1]
    p_cols = t - c
    limit = custom_mask_limit(model)
    if limit <= 0 or n < 2 or p_cols <= 0:
        return None
    device = input_ids.device
    prompt, pmask = input_ids[:, :p_cols], attention_mask[:, :p_cols]
    same = ((prompt[1:] == prompt[:-1]) & (pmask[1:] == pmask[:-1])).all(dim=1)
    if not bool(same.any()):
        return None
    cmask = attention_mask[:, p_cols:].bool()
    comp_len = cmask.sum(dim=1)
    if not bool((cmask == (torch.arange(c, device=device)[None, :] < comp_len[:, None])).all()):
        return None
    p_len = pmask.sum(dim=1)
    if bool((p_len == 0).any()) or bool((score_mask.bool() & ~cmask).any()):
        return None
    starts = [0] + [i for i in range(1, n) if not bool(same[i - 1])]
    bounds = list(zip(starts, [*starts[1:], n], strict=True))
    plen, clen = p_len.tolist(), comp_len.tolist()
    lengths = [plen[a] + sum(clen[a:b]) for a, b in bounds]
    width = -(-max(lengths) // 8) * 8
    g = len(bounds)
    if width > limit or g * width * width > MAX_MASK_ELEMENTS:
        return None
    src_row = torch.zeros(g, width, dtype=torch.long)
    src_col = torch.zeros(g, width, dtype=torch.long)
    pos = torch.zeros(g, width, dtype=torch.long)
    seg = torch.full((g, width), -1, dtype=torch.long)
    start = torch.zeros(n, dtype=torch.long)  # packed column of each row's first completion token
    for gi, (a, b) in enumerate(bounds):
        pl = plen[a]
        src_row[gi, :pl] = a
        src_col[gi, :pl] = torch.arange(p_cols - pl, p_cols)
        pos[gi, :pl] = torch.arange(pl)
        seg[gi, :pl] = 0
        col = pl
        for j, row in enumerate(range(a, b)):
            cl = clen[row]
            src_row[gi, col:col + cl] = row
            src_col[gi, col:col + cl] = torch.arange(p_cols, p_cols + cl)
            pos[gi, col:col + cl] = torch.arange(pl, pl + cl)
            seg[gi, col:col + cl] = j + 1
            start[row] = col
            col += cl
    src_row, src_col, pos, seg = (x.to(device) for x in (src_row, src_col, pos, seg))
    ids = torch.where(seg >= 0, input_ids[src_row, src_col], torch.zeros_like(src_row))
    q, k = seg[:, :, None], seg[:, None, :]
    j = torch.arange(width, device=device)
    allowed = (j[:, None] >= j[None, :])[None] & ((k == 0) | (k == q)) & (k >= 0)
    allowed |= torch.eye(width, dtype=torch.bool, device=device)[None]
    hidden = model.hidden_states(ids, attention_mask=allowed[:, None], position_ids=pos)  # [G, W, D]
    group_of = torch.repeat_interleave(torch.arange(g, device=device),
                                       torch.tensor([b - a for a, b in bounds], device=device))
    scored = score_mask.bool()
    rows, cols = scored.nonzero(as_tuple=True)
    # completion token t of a row is predicted by the last prompt token (t = 0) or by its own token t - 1
    first = (p_len.to(device) - 1)[rows]
    at = torch.where(cols == 0, first, start.to(device)[rows] + cols - 1)
    h = hidden[group_of[rows], at]
    tok = token_logprobs(h, model.output_embedding(), input_ids[:, p_cols:][scored], chunk_size)
    out = torch.zeros(score_mask.shape, dtype=tok.dtype, device=tok.device)
    return out.masked_scatter(scored, tok)


def shares_prefix(model: Any, enabled: bool = True) -> tuple[bool, str]:
    """Whether pair batches of ``model`` run with prefix sharing, and why (for the run summary)."""
    if not enabled:
        return False, "off (align.share_prefix=false)"
    if custom_mask_limit(model) <= 0:
        return False, ("off: the model takes no custom attention mask (flash/flex attention, a sliding window, "
                       "virtual tokens, pipeline stages, or an attention backend chosen by name)")
    return True, "on: each pair's prompt is computed once (one packed row per pair)"


__all__ = ["MAX_MASK_ELEMENTS", "PackedPairs", "custom_mask_limit", "group_token_logps", "pack_pairs",
           "pair_sequence_logps", "shares_prefix"]
