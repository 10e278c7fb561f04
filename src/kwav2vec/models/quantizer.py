"""Gumbel-softmax product quantizer (fairseq `GumbelVectorQuantizer`, groups not combined, depth 1).

G groups of V codewords each; a frame picks one codeword per group (hard one-hot, straight-through
Gumbel-softmax in training, argmax in eval) and the G codewords are concatenated. Always runs in
float32, also under autocast: the softmax over V entries and the perplexities are fragile in fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    x: torch.Tensor  # (N, vq_dim) float32 quantized vectors
    codes: torch.Tensor  # (N, G) long, chosen entry per group
    code_perplexity: torch.Tensor  # () perplexity of the hard code histogram, summed over groups
    prob_perplexity: torch.Tensor  # () perplexity of the mean softmax, summed over groups (diversity loss)
    temperature: float
    num_vars: int  # G * V


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """probs: (N, G, V) -> sum over groups of exp(entropy of the mean distribution); fairseq's 1e-7 guard."""
    avg = probs.mean(dim=0)  # (G, V)
    return torch.exp(-torch.sum(avg * torch.log(avg + 1e-7), dim=-1)).sum()


class GumbelVectorQuantizer(nn.Module):
    """Args: dim: input channels; num_vars: V; groups: G; vq_dim: output dim (G * codeword dim);
    temp: (start, end, decay) of the annealed temperature max(start * decay**step, end)."""

    def __init__(self, dim: int, num_vars: int, groups: int, vq_dim: int, temp: tuple[float, float, float]):
        super().__init__()
        if vq_dim % groups:
            raise ValueError(f"vq_dim {vq_dim} must be divisible by groups {groups}")
        self.groups = groups
        self.num_vars = num_vars
        self.vars = nn.Parameter(torch.empty(1, groups * num_vars, vq_dim // groups))
        nn.init.uniform_(self.vars)
        self.weight_proj = nn.Linear(dim, groups * num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.max_temp, self.min_temp, self.temp_decay = (float(t) for t in temp)
        self.curr_temp = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        self.curr_temp = max(self.max_temp * self.temp_decay**num_updates, self.min_temp)

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """x: (N, dim) -> QuantizerOutput with x (N, vq_dim)."""
        if x.dim() != 2:
            raise ValueError(f"expected (N, dim) input, got {tuple(x.shape)}")
        N = x.shape[0]
        G, V = self.groups, self.num_vars
        device_type = x.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            logits = F.linear(x.float(), self.weight_proj.weight.float(), self.weight_proj.bias.float())
            logits = logits.view(N, G, V)
            codes = logits.argmax(dim=-1)  # (N, G)
            with torch.no_grad():
                hard = F.one_hot(codes, V).float()
                code_ppl = perplexity(hard)
            prob_ppl = perplexity(torch.softmax(logits, dim=-1))
            if self.training:
                onehot = F.gumbel_softmax(logits, tau=self.curr_temp, hard=True)  # (N, G, V), straight-through
                codes = onehot.argmax(dim=-1)  # the sampled codes, not the argmax of the logits
            else:
                onehot = hard
            # sum over v of onehot * vars as a batched matmul: never materialises (N, G*V, d)
            codebook = self.vars.float().view(G, V, -1)
            q = torch.einsum("ngv,gvd->ngd", onehot, codebook).reshape(N, -1)
        return QuantizerOutput(q, codes, code_ppl, prob_ppl, self.curr_temp, G * V)
