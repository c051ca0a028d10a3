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


def gcd_hard(u: torch.Tensor, v: torch.Tensor, v_neg: torch.Tensor, tau: float,
             duplicate_cos: float = 0.98) -> torch.Tensor:
    """GCD with mined hard negatives: ``u (B, D)`` sentence features against the batch's image
    features ``v (B, D)`` and extra negatives ``v_neg (N, D)`` (all normalized). The sentence-to-image
    direction sees the extra negatives, except those whose image feature is within
    ``duplicate_cos`` of the positive's (most likely the same scene: false negatives); the
    image-to-sentence direction is the batch's, as in :func:`info_nce`."""
    labels = torch.arange(u.shape[0], device=u.device)
    batch = u @ v.T / tau
    extra = (u @ v_neg.T / tau).masked_fill(v @ v_neg.T > duplicate_cos, float("-inf"))
    rows = torch.cat([batch, extra], dim=1)
    return (F.cross_entropy(rows, labels) + F.cross_entropy(batch.T, labels)) / 2


def nearest_neighbours(g: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """``(n, k)`` indices of each row's k nearest other rows by inner product (``g`` normalized):
    the hard negatives :func:`gcd_hard` reads, mined once from the cached VL features."""
    g = g.float()
    out = []
    for s in range(0, g.shape[0], chunk):
        sims = g[s:s + chunk] @ g.T
        sims[torch.arange(sims.shape[0]), torch.arange(s, s + sims.shape[0])] = -float("inf")  # not itself
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


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


def word_similarity(words: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between the different pseudo words of each sentence ``(B, L, d)``: low
    when every word of a sentence points elsewhere (a diversity term)."""
    w = F.normalize(words, dim=-1)
    sim = w @ w.transpose(1, 2)
    off = ~torch.eye(words.shape[1], dtype=torch.bool, device=words.device)
    return sim[:, off].pow(2).mean()
