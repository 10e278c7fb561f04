"""wav2vec 2.0 pretraining objective: contrastive (InfoNCE) + diversity + feature penalty, all in fp32.

Weights follow fairseq's `wav2vec` criterion with `infonce=True`: fairseq sums the cross-entropy
over masked frames, adds `weight * term * sample_size` for each extra term and divides gradients by
`sample_size` (the number of masked frames); the per-frame equivalent used here is
`mean CE + 0.1 * diversity + 10 * feature_pen` (BASE; LARGE uses a feature-penalty weight of 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIVERSITY_WEIGHT = 0.1  # fairseq loss_weights[0]
FEATURE_PEN_WEIGHT = 10.0  # fairseq loss_weights[1] for BASE (0 for LARGE)


def default_feature_pen_weight(config) -> float:
    """fairseq's feature-penalty weight for a backbone of this feature encoder: BASE's 10 for the
    "default" extractor (group norm on conv 0 only), LARGE's 0 for the "layer_norm" one (tiny too).
    A layer norm in every conv block lets the penalty be met by shrinking the conv output towards
    a constant vector, and the time variation goes with it (measured on the tiny preset: see
    `kwav2vec.lit.pretrain.Pretrainer`'s `feature_pen_weight`)."""
    return 0.0 if config.extractor_mode == "layer_norm" else FEATURE_PEN_WEIGHT


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, M, ...), index (B, M, K) into dim 1 -> (B, M, K, ...)."""
    B, M, K = index.shape
    flat = index.reshape(B, M * K)
    if values.dim() == 2:
        return values.gather(1, flat).view(B, M, K)
    rest = values.shape[2:]
    out = values.gather(1, flat.view(B, M * K, *([1] * len(rest))).expand(B, M * K, *rest))
    return out.view(B, M, K, *rest)


def contrastive_logits(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    negative_indices: torch.Tensor,
    temperature: float = 0.1,
    codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cosine similarity / temperature against [positive, K distractors], float32.

    Args:
        predictions: (B, M, F) projected context vectors at the masked frames.
        targets: (B, M, F) projected quantized vectors at the same frames (the positives).
        negative_indices: (B, M, K) indices into the M masked frames of the same utterance.
        temperature: fairseq `logit_temp`.
        codes: (B, M, G) quantizer codes; a distractor with the positive's codes is the same vector,
            so its logit is set to -inf (fairseq compares the vectors themselves).
    Returns:
        (B, M, 1 + K) logits, the positive at index 0.
    """
    if predictions.shape != targets.shape or predictions.dim() != 3:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} must both be (B, M, F)"
        )
    if negative_indices.shape[:2] != predictions.shape[:2]:
        raise ValueError(f"negative_indices {tuple(negative_indices.shape)} must be (B, M, K) with (B, M) = "
                         f"{tuple(predictions.shape[:2])}")
    with torch.autocast(device_type=predictions.device.type, enabled=False):
        eps = 1e-8  # torch.cosine_similarity's guard
        p = predictions.float()
        t = targets.float()
        p = p / p.norm(dim=-1, keepdim=True).clamp(min=eps)
        t = t / t.norm(dim=-1, keepdim=True).clamp(min=eps)
        # all pairs of one utterance at once, then pick the distractors: a (B, M, M) matmul is far
        # cheaper than gathering a (B, M, K, F) tensor of distractor vectors
        sim = torch.bmm(p, t.transpose(1, 2))  # (B, M, M)
        pos = sim.diagonal(dim1=1, dim2=2).unsqueeze(-1)  # (B, M, 1)
        neg = sim.gather(2, negative_indices)  # (B, M, K): sim[b, m, idx[b, m, k]]
        if codes is not None:
            same = (_gather_rows(codes, negative_indices) == codes.unsqueeze(2)).all(-1)  # (B, M, K)
            neg = neg.masked_fill(same, float("-inf"))
        return torch.cat([pos, neg], dim=-1) / temperature


def contrastive_loss(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M, 1+K) logits -> (mean cross-entropy with the positive at 0, accuracy), both float32.

    Accuracy as fairseq: argmax at the positive, not counting frames whose logits are all equal.
    """
    flat = logits.float().reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device))
    with torch.no_grad():
        top = flat.argmax(-1) == 0
        bottom = flat.argmin(-1) == 0
        accuracy = (top & ~bottom).float().mean()
    return loss, accuracy


def diversity_loss(prob_perplexity: torch.Tensor, num_vars: int) -> torch.Tensor:
    """(G*V - perplexity) / (G*V): 0 when every codeword is used equally on average."""
    return (num_vars - prob_perplexity.float()) / num_vars


def pretraining_loss(
    out,
    diversity_weight: float = DIVERSITY_WEIGHT,
    feature_pen_weight: float = FEATURE_PEN_WEIGHT,
) -> dict[str, torch.Tensor]:
    """Total loss and its terms from a `PretrainOutput`, all float32 scalars.

    Returns keys: loss, contrastive, diversity, feature_pen, accuracy, code_perplexity,
    prob_perplexity, mask_fraction (masked frames / real frames).
    """
    contrastive, accuracy = contrastive_loss(out.logits)
    diversity = diversity_loss(out.prob_perplexity, out.num_vars)
    feature_pen = out.features_pen.float()
    loss = contrastive + diversity_weight * diversity + feature_pen_weight * feature_pen
    mask_fraction = out.mask.sum().float() / out.frame_lengths.sum().clamp(min=1).float()
    return {
        "loss": loss,
        "contrastive": contrastive.detach(),
        "diversity": diversity.detach(),
        "feature_pen": feature_pen.detach(),
        "accuracy": accuracy,
        "code_perplexity": out.code_perplexity.detach().float(),
        "prob_perplexity": out.prob_perplexity.detach().float(),
        "mask_fraction": mask_fraction.detach(),
    }
