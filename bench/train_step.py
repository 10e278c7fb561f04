"""Pretraining step: ours (kwav2vec Wav2Vec2Model) vs Hugging Face `Wav2Vec2ForPreTraining`.

    .venv/bin/python bench/train_step.py                       # base + tiny, 4 x 4 s and 2 x 15.6 s
    .venv/bin/python bench/train_step.py --presets tiny --repeats 10 --shapes 4x4.0

What is timed: one full training step = mask + distractor sampling, forward, loss, backward, AdamW
step, zero_grad. For Hugging Face the step includes its own numpy `_compute_mask_indices` and
`_sample_negative_indices` (as its pretraining example does every step) and its loss divided by the
number of masked frames. Both use the same architecture (config translated field by field), the same
batch, training mode (dropouts on), and the same optimizer (torch AdamW, fused kernel) so the optimizer
is not what is compared. Printed: median step time and the ratio ours / HF, the ratio of median
process CPU times (less sensitive to other processes on a shared machine), and the ratio of peak
memory growth in a step. How workers are stepped and memory is measured: bench/_harness.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _harness import SAMPLE_RATE, compare, memory_measurable, serve  # noqa: E402

IMPLS = ("ours", "hf")


def hf_config(cfg):
    """Our Wav2Vec2Config -> transformers.Wav2Vec2Config with the same architecture and task."""
    import transformers

    layers = cfg.conv_layers
    return transformers.Wav2Vec2Config(
        conv_dim=[c for c, _, _ in layers], conv_kernel=[k for _, k, _ in layers],
        conv_stride=[s for _, _, s in layers], conv_bias=cfg.conv_bias,
        feat_extract_norm="layer" if cfg.extractor_mode == "layer_norm" else "group",
        do_stable_layer_norm=cfg.layer_norm_first,
        hidden_size=cfg.encoder_embed_dim, num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=cfg.encoder_attention_heads, intermediate_size=cfg.encoder_ffn_embed_dim,
        num_conv_pos_embeddings=cfg.conv_pos, num_conv_pos_embedding_groups=cfg.conv_pos_groups,
        hidden_dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout, feat_proj_dropout=cfg.dropout_input,
        feat_quantizer_dropout=cfg.dropout_features, layerdrop=cfg.encoder_layerdrop,
        num_codevectors_per_group=cfg.latent_vars, num_codevector_groups=cfg.latent_groups,
        codevector_dim=cfg.vq_dim, proj_codevector_dim=cfg.final_dim_, num_negatives=cfg.num_negatives,
        contrastive_logits_temperature=cfg.logit_temp, diversity_loss_weight=0.1,
        mask_time_prob=cfg.mask_prob, mask_time_length=cfg.mask_length, mask_time_min_masks=cfg.mask_min_masks,
    )


def worker(impl: str, preset_name: str, batch: int, seconds: float, threads: int, conn) -> None:
    import numpy as np
    import torch

    from kwav2vec.models.config import preset
    from kwav2vec.models.losses import pretraining_loss
    from kwav2vec.models.wav2vec2 import Wav2Vec2Model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    np.random.seed(0)
    cfg = preset(preset_name)
    S = int(round(seconds * SAMPLE_RATE))
    audio = torch.randn(batch, S)
    lengths = torch.full((batch,), S, dtype=torch.long)

    if impl == "ours":
        model = Wav2Vec2Model(cfg).train()

        def step(i: int) -> None:
            model.set_num_updates(i)
            loss = pretraining_loss(model(audio, lengths))["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        import transformers
        from transformers.models.wav2vec2.modeling_wav2vec2 import (
            _compute_mask_indices,
            _sample_negative_indices,
        )

        transformers.logging.set_verbosity_error()
        model = transformers.Wav2Vec2ForPreTraining(hf_config(cfg)).train()
        T = int(model._get_feat_extract_output_lengths(S))
        max_t, min_t, decay = cfg.latent_temp

        def step(i: int) -> None:
            # as in transformers' examples/pytorch/speech-pretraining/run_wav2vec2_pretraining_no_trainer.py
            mask = _compute_mask_indices((batch, T), cfg.mask_prob, cfg.mask_length, min_masks=cfg.mask_min_masks)
            neg = _sample_negative_indices((batch, T), cfg.num_negatives, mask)
            mask_t = torch.tensor(mask, dtype=torch.bool)
            neg_t = torch.tensor(neg, dtype=torch.long)
            model.set_gumbel_temperature(max(max_t * decay**i, min_t))
            out = model(audio, mask_time_indices=mask_t, sampled_negative_indices=neg_t)
            (out.loss / mask_t.sum()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=True)
    serve(step, sum(p.numel() for p in model.parameters()), conn)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["base", "tiny"], help="model presets to compare")
    ap.add_argument("--shapes", nargs="+", default=["4x4.0", "2x15.6"], help="batches as <utterances>x<seconds>")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per implementation and case")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per implementation first")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)), help="torch threads")
    args = ap.parse_args(argv)
    if not memory_measurable():
        print("this benchmark measures memory through /proc (Linux only)", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    print(f"threads={args.threads} repeats={args.repeats} warmup={args.warmup} (median over repeats)")
    header = f"{'preset':<6} {'batch':<8} {'params':>11} {'ours s':>8} {'HF s':>8} {'time ratio':>10} " \
             f"{'cpu ratio':>9} {'ours MiB':>9} {'HF MiB':>9} {'mem ratio':>9}"
    print(header)
    print("-" * len(header))
    for name in args.presets:
        for shape in args.shapes:
            b, s = shape.lower().split("x")
            res = compare(worker, IMPLS, (name, int(b), float(s), args.threads), args.repeats, args.warmup)
            t, c, m = res["time"], res["cpu"], res["mem"]
            print(f"{name:<6} {shape:<8} {res['params']['ours']:>11,} {t['ours']:>8.3f} {t['hf']:>8.3f} "
                  f"{t['ours'] / t['hf']:>10.2f} {c['ours'] / c['hf']:>9.2f} "
                  f"{m['ours'] / 2**20:>9.1f} {m['hf'] / 2**20:>9.1f} "
                  f"{m['ours'] / m['hf']:>9.2f}", flush=True)
    print("time ratio: median wall-clock step time, ours / HF; cpu ratio: the same for process CPU time,")
    print("which shared-machine load disturbs less; mem ratio: median peak RSS growth in a step, ours / HF.")
    print("goal: time ratio <= 0.75, memory ratio <= 0.9 (lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
