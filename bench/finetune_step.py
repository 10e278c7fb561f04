"""Fine-tuning step: ours (HierarchicalFineTuner) vs Hugging Face `Wav2Vec2ForCTC`, and the cost of
the syllable head.

    .venv/bin/python bench/finetune_step.py                     # tiny + base, 4 x 4 s
    .venv/bin/python bench/finetune_step.py --presets tiny --repeats 10

Four workers, one process each, same thread count:
- `ours`: `HierarchicalFineTuner.training_step` with mtl_weight 0 (grapheme head only, the
  configuration Wav2Vec2ForCTC has), then backward, AdamW step, zero_grad;
- `hf`: `Wav2Vec2ForCTC` with the same architecture (config translated by bench/train_step.py's
  `hf_config`), the same fine-tuning dropouts, masking (time 0.5 x 10 frames, channels 0.1 x 64),
  frozen feature encoder, zero_infinity CTC over the same jamo vocabulary and targets;
- `ours_mtl`: ours with mtl_weight 0.5, i.e. plus the syllable head (2 transformer layers + linear
  over a 2,000-syllable vocabulary, KsponSpeech-sized);
- `matmuls`: only the matrix products the grapheme-only step must do (`matmul_floor`), a lower
  bound on any implementation's step: on a CPU where these run at the BLAS's peak, it bounds the
  time ratio that is reachable at all.
LayerDrop is off in all (a random number of layers per step would only add noise). Both
implementations use torch's fused AdamW, so the optimizer is not what is compared. The parent
steps the workers one at a time, rotating the order every round, so load drifts hit all equally.
Printed: median wall-clock step time, ratios ours / HF (wall and process CPU time, the latter less
disturbed by other processes on a shared machine), the syllable head's extra cost (ours_mtl / ours),
and peak memory ratios. How workers are stepped and memory is measured: bench/_harness.py (Linux only).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _harness import SAMPLE_RATE, compare, memory_measurable, serve  # noqa: E402
from train_step import hf_config  # noqa: E402  (our config -> transformers' config)

IMPLS = ("ours", "hf", "ours_mtl", "matmuls")
MASK = {"mask_prob": 0.5, "mask_length": 10, "mask_channel_prob": 0.1, "mask_channel_length": 64}
JAMO_PER_FRAME = 0.3  # about 15 jamo a second of read Korean speech: realistic target lengths
SYLLABLES = 2000


def build(impl: str, preset_name: str, batch: int, seconds: float):
    """-> (step function, number of parameters) for one implementation."""
    import torch

    from kwav2vec.lit.finetune import HierarchicalFineTuner
    from kwav2vec.text.vocab import Vocabulary

    S = int(round(seconds * SAMPLE_RATE))
    audio = torch.randn(batch, S)
    lengths = torch.full((batch,), S, dtype=torch.long)
    graphemes = Vocabulary.grapheme()
    syllables = Vocabulary([chr(0xAC00 + i) for i in range(SYLLABLES)], "syllable")
    ours = HierarchicalFineTuner(
        model=preset_name, grapheme_vocabulary=graphemes.to_dict(), syllable_vocabulary=syllables.to_dict(),
        mtl_weight=0.5 if impl == "ours_mtl" else 0.0, layerdrop=0.0, total_steps=10_000, **MASK,
    )
    T = int(ours.backbone.frame_lengths(lengths)[0])
    L = int(T * JAMO_PER_FRAME)
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(3, len(graphemes), (batch, L), generator=gen)  # no blank, no specials
    syllable_targets = torch.randint(3, len(syllables), (batch, L // 3), generator=gen)
    data = {
        "ids": [f"u{i}" for i in range(batch)], "audio": audio, "audio_lengths": lengths,
        "graphemes": targets, "grapheme_lengths": torch.full((batch,), L),
        "syllables": syllable_targets, "syllable_lengths": torch.full((batch,), L // 3),
    }

    if impl == "matmuls":
        return matmul_floor(ours, batch, S, T, len(graphemes)), sum(p.numel() for p in ours.parameters())
    if impl in ("ours", "ours_mtl"):
        model = ours.train()
        optimizer = model.configure_optimizers()["optimizer"]

        def step(i: int) -> None:
            loss = model.training_step(data, 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        import transformers

        transformers.logging.set_verbosity_error()
        hcfg = hf_config(ours.config)  # our resolved config: the fine-tuning dropouts are already in it
        hcfg.vocab_size = len(graphemes)
        hcfg.pad_token_id = graphemes.blank_id  # Wav2Vec2ForCTC's CTC blank
        hcfg.ctc_loss_reduction = "sum"  # divided by the token count below, as ours
        hcfg.ctc_zero_infinity = True
        hcfg.final_dropout = ours.hparams.final_dropout
        hcfg.layerdrop = 0.0
        hcfg.apply_spec_augment = True
        hcfg.mask_time_prob, hcfg.mask_time_length = MASK["mask_prob"], MASK["mask_length"]
        hcfg.mask_time_min_masks = ours.config.mask_min_masks
        hcfg.mask_feature_prob, hcfg.mask_feature_length = MASK["mask_channel_prob"], MASK["mask_channel_length"]
        model = transformers.Wav2Vec2ForCTC(hcfg).train()
        model.freeze_feature_encoder()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0, fused=True)
        ntokens = batch * L

        def step(i: int) -> None:
            out = model(audio, labels=targets)
            (out.loss / ntokens).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def matmul_floor(model, batch: int, samples: int, frames: int, vocab_size: int):
    """-> a step that runs only the matrix products every implementation of this fine-tuning step
    performs, at their shapes and operand layouts (what autograd's linear forward and backward call):
    the frozen feature encoder's convolutions as im2col products (forward only), the feature
    projection and every transformer layer's six projections (forward, input gradient, weight
    gradient), attention's batched products (2 forward, 4 backward) and the CTC head. Outputs are
    preallocated, so allocation and page faults are not counted. The positional convolution, norms,
    activations, dropout, softmax and the optimizer are left out: the time is a lower bound."""
    import torch

    cfg = model.config
    B, D, H = batch, cfg.encoder_embed_dim, cfg.encoder_attention_heads
    rows = B * frames
    products = []  # (a, b, out): out = a @ b

    def product(m: int, k: int, n: int, b_transposed: bool = False) -> None:
        b = torch.randn(n, k).t() if b_transposed else torch.randn(k, n)  # linear's weight is (n, k)
        products.append((torch.randn(m, k), b, torch.empty(m, n)))

    def linear(n_in: int, n_out: int) -> None:  # every input gradient is needed: all of it trains
        product(rows, n_in, n_out, b_transposed=True)  # forward: x W^T
        product(rows, n_out, n_in)  # grad_x = grad_y W
        products.append((torch.randn(n_out, rows), torch.randn(rows, n_in), torch.empty(n_out, n_in)))  # grad_W

    t, n_in = samples, 1
    for n_out, kernel, stride in model.backbone.feature_extractor.layer_specs:
        t = (t - kernel) // stride + 1
        product(B * t, n_in * kernel, n_out, b_transposed=True)
        n_in = n_out
    if t != frames:
        raise RuntimeError(f"feature encoder gives {t} frames, the model {frames}")
    linear(n_in, D)  # feature projection (its input gradient feeds the trainable layer norm before it)
    for _ in range(cfg.encoder_layers):
        for _ in range(4):  # q, k, v, out
            linear(D, D)
        linear(D, cfg.encoder_ffn_embed_dim)
        linear(cfg.encoder_ffn_embed_dim, D)
    linear(D, vocab_size)
    hd = D // H
    q, k, v = (torch.randn(B * H, frames, hd) for _ in range(3))
    scores, out = torch.empty(B * H, frames, frames), torch.empty(B * H, frames, hd)
    grad_q = torch.empty(B * H, frames, hd)
    attention = [(q, k.transpose(1, 2), scores), (scores, v, out),  # forward
                 (scores.transpose(1, 2), out, grad_q), (out, v.transpose(1, 2), scores),  # grad_v, grad_p
                 (scores, k, grad_q), (scores.transpose(1, 2), q, grad_q)]  # grad_q, grad_k

    def step(i: int) -> None:
        for a, b, c in products:
            torch.mm(a, b, out=c)
        for _ in range(cfg.encoder_layers):
            for a, b, c in attention:
                torch.bmm(a, b, out=c)

    return step


def worker(impl: str, preset_name: str, batch: int, seconds: float, threads: int, conn) -> None:
    import numpy as np
    import torch

    warnings.simplefilter("ignore")  # `self.log` outside a Trainer warns; nothing else is expected
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    np.random.seed(0)
    serve(*build(impl, preset_name, batch, seconds), conn)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "base"], help="model presets to compare")
    ap.add_argument("--shapes", nargs="+", default=["4x4.0"], help="batches as <utterances>x<seconds>")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per implementation and case")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per implementation first")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)), help="torch threads")
    args = ap.parse_args(argv)
    if not memory_measurable():
        print("this benchmark measures memory through /proc (Linux only)", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    print(f"threads={args.threads} repeats={args.repeats} warmup={args.warmup} (medians over repeats)")
    header = (f"{'preset':<6} {'batch':<7} {'params':>11} {'ours s':>7} {'HF s':>7} {'time':>6} {'cpu':>6} "
              f"{'ours MiB':>8} {'HF MiB':>8} {'mem':>5} | {'+syl s':>7} {'time':>6} {'cpu':>6} {'mem':>5} | "
              f"{'mm s':>6} {'/HF':>5}")
    print(header)
    print("-" * len(header))
    for name in args.presets:
        for shape in args.shapes:
            b, s = shape.lower().split("x")
            res = compare(worker, IMPLS, (name, int(b), float(s), args.threads), args.repeats, args.warmup)
            t, c, m = res["time"], res["cpu"], res["mem"]
            print(f"{name:<6} {shape:<7} {res['params']['ours']:>11,} {t['ours']:>7.3f} {t['hf']:>7.3f} "
                  f"{t['ours'] / t['hf']:>6.2f} {c['ours'] / c['hf']:>6.2f} {m['ours'] / 2**20:>8.1f} "
                  f"{m['hf'] / 2**20:>8.1f} {m['ours'] / m['hf']:>5.2f} | {t['ours_mtl']:>7.3f} "
                  f"{t['ours_mtl'] / t['ours']:>6.2f} {c['ours_mtl'] / c['ours']:>6.2f} "
                  f"{m['ours_mtl'] / m['ours']:>5.2f} | {t['matmuls']:>6.3f} {t['matmuls'] / t['hf']:>5.2f}", flush=True)
    print("left of |: grapheme-only (mtl_weight 0) ours / HF Wav2Vec2ForCTC; time = median wall-clock step,")
    print("cpu = median process CPU time, mem = median peak RSS growth in a step (lower is better; goal time <= 0.8).")
    print("middle: ours with the syllable head (mtl_weight 0.5) and its ratios to grapheme-only ours.")
    print("right: the matrix products alone that both grapheme-only steps perform (see `matmul_floor`), and")
    print("their time / HF's step: no implementation built on these products can have a lower time ratio.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
