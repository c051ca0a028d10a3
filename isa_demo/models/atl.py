"""The adaptive token learner (ATL): maps a feature map to a pseudo sentence of L word embeddings.

1. ``F' = conv1x1(F) + pos``  (width d)
2. ``A = softmax_hw(conv(F'))`` -- L spatial attention maps; ``T0 = A F'``  (L x d)
3. refine ``T0``: self-attention over the tokens + cross-attention to ``F'`` (+ MLP), n layers
4. MLP to the VL word-embedding width ``d_w``: the pseudo sentence ``S = [s_1 .. s_L]``; with
   ``word_norm`` > 0 each pseudo word is rescaled to that length (the VL model's own word
   embeddings' mean norm: the text tower then reads pseudo words at the scale of real ones).
The maps ``A`` are what the demo shows as "what each word looks at".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaptiveTokenLearner(nn.Module):
    def __init__(self, in_channels: int, word_dim: int, num_tokens: int = 4, dim: int = 256, layers: int = 1,
                 heads: int = 4, grid: int = 4, word_norm: float = 0.0):
        super().__init__()
        self.num_tokens = num_tokens
        self.word_norm = word_norm
        self.proj = nn.Conv2d(in_channels, dim, 1)
        self.pos = nn.Parameter(torch.zeros(1, dim, grid, grid))
        nn.init.normal_(self.pos, std=0.02)
        self.attn_logits = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, num_tokens, 1))
        self.refine = nn.ModuleList(
            nn.TransformerDecoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.to_words = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, word_dim))

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats (B, C, h, w)`` -> pseudo sentence ``(B, L, d_w)`` and maps ``(B, L, h, w)``."""
        x = self.proj(feats)
        B, d, h, w = x.shape
        pos = self.pos if self.pos.shape[-2:] == (h, w) else F.interpolate(self.pos, size=(h, w), mode="bilinear",
                                                                           align_corners=False)
        x = x + pos
        maps = self.attn_logits(x).flatten(2).softmax(-1)  # (B, L, hw)
        mem = x.flatten(2).transpose(1, 2)  # (B, hw, d)
        tokens = maps @ mem  # (B, L, d)
        for layer in self.refine:
            tokens = layer(tokens, mem)
        words = self.to_words(self.norm(tokens))
        if self.word_norm > 0:
            words = F.normalize(words, dim=-1) * self.word_norm
        return words, maps.view(B, self.num_tokens, h, w)
