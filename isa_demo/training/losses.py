"""The training losses, each written once: symmetric InfoNCE (CLIP, GCD, the masked-pair losses)
and ISA's two local-alignment options (LAR late interaction, LAR vocabulary)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a ``(B, B)`` similarity matrix whose diagonal holds the positives
    (already divided by the temperature): the mean of the row-wise and column-wise cross-entropy."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def lar_late(h: torch.Tensor, p: torch.Tensor, tau: float) -> torch.Tensor:
    """LAR (late): ``h (B, L, D)`` sentence token features, ``p (B, K, D)`` image local features
    (normalized); each token's best local match, averaged, as the InfoNCE similarity."""
    sims = torch.einsum("jld,ikd->ijlk", F.normalize(h, dim=-1), p)  # image i, sentence j
    s = sims.max(-1).values.mean(-1)  # (B_img, B_sent)
    return info_nce(s / tau)


def lar_vocab(words: torch.Tensor, vocab_emb: torch.Tensor) -> torch.Tensor:
    """LAR (vocabulary): pull each pseudo word towards its nearest learned word embedding."""
    cos = F.normalize(words, dim=-1) @ F.normalize(vocab_emb, dim=-1).T
    return (1 - cos.max(-1).values).mean()
