"""The README is executed: every command in its ```bash blocks runs here, in README order, on tiny
corpora made from the demo audio (KsponSpeech PCM + CP949, Zeroth FLAC, a folder, a TSV, unlabeled
audio) and tiny fairseq-layout checkpoints standing in for `wav2vec_small.pt` and K-wav2vec's model.

How each kind of line runs (the README says so too):
- `kwav2vec pretrain|finetune fit|test ...`: as written, plus CPU flags (one CPU device, fp32), a
  tiny model where the README trains from scratch, and two updates;
- lines that need GPUs (the multi-GPU / multi-node section): parsed only (`--print_config`, or the
  argument parser for `evaluate`);
- `kwav2vec prepare|convert|evaluate|transcribe ...`: exactly as written;
- `make lint` runs; the other make targets are checked with `make -n` (too long for the suite).
A README command that this file does not know how to run fails the test, so a new line needs a way
to run here before it lands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kwav2vec import cli
from kwav2vec.inference import evaluate
from kwav2vec.text.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEMO = REPO / "data" / "demo"
TINY = {"encoder_layers": 1, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2,
        "conv_pos": 8, "conv_pos_groups": 4, "final_dim": 16, "latent_vars": 8, "num_negatives": 4,
        "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"}
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
       "--trainer.num_nodes", "1", "--trainer.precision", "32-true", "--trainer.max_steps", "2",
       "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
       "--data.num_workers", "0", "--data.pin_memory", "false"]
GPU_ONLY = ("conf/trainer/multinode.yaml", "--trainer.accelerator gpu")


def readme_commands(text: str) -> list[str]:
    """The commands of the README's ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            if line.strip():
                commands.append(" ".join(line.split()))
    return commands


def test_readme_commands_are_read_with_continuations_and_without_comments():
    text = "x\n```bash\nkwav2vec a \\\n    --b c   # note\n# only a comment\nmake test  # the suite\n```\n"
    assert readme_commands(text) == ["kwav2vec a --b c", "make test"]


# ------------------------------------------------------------------------------------ the corpora
def demo_utterances(n: int, min_samples: int = 32000) -> list[tuple[np.ndarray, str]]:
    rows = [json.loads(line) for line in (DEMO / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["num_samples"] >= min_samples][:n]
    return [(sf.read(DEMO / r["audio"], dtype="float32")[0], r["norm"]) for r in rows]


def write_pcm(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.clip(audio, -1, 1) * 32767).astype("<i2").tofile(path)


def make_sources(src: Path) -> None:
    """/data/... of the README: the corpora and the English / K-wav2vec checkpoints it converts."""
    utts = demo_utterances(12)
    kspon = src / "KsponSpeech"
    lines = []
    for i, (audio, text) in enumerate(utts[:8], start=1):
        base = kspon / "KsponSpeech_01" / "KsponSpeech_0001" / f"KsponSpeech_{i:06d}"
        write_pcm(base.with_suffix(".pcm"), audio)
        base.with_suffix(".txt").write_bytes(f"o/ {text}".encode("cp949"))
        if i > 6:
            lines.append(f"KsponSpeech_01/KsponSpeech_0001/KsponSpeech_{i:06d}.pcm :: {text}")
    (kspon / "KsponSpeech_scripts").mkdir(parents=True)
    (kspon / "KsponSpeech_scripts" / "dev.trn").write_bytes(("\n".join(lines) + "\n").encode("cp949"))
    for i, (audio, text) in enumerate(utts[8:11], start=1):
        base = kspon / "KsponSpeech_eval" / "eval_clean" / f"KsponSpeech_E{i:05d}"
        write_pcm(base.with_suffix(".pcm"), audio)
        base.with_suffix(".txt").write_bytes(text.encode("cp949"))
    for split, part in (("train", utts[:6]), ("test", utts[8:11])):
        folder = src / "zeroth_korean" / f"{split}_data_01" / "003" / "106"
        folder.mkdir(parents=True)
        trans = []
        for i, (audio, text) in enumerate(part):
            sf.write(folder / f"106_003_{i:04d}.flac", audio, 16000)
            trans.append(f"106_003_{i:04d} {text}")
        (folder / "106_003.trans.txt").write_text("\n".join(trans) + "\n", encoding="utf-8")
    (src / "my_corpus").mkdir()
    (src / "raw_audio").mkdir()
    tsv = []
    for i, (audio, text) in enumerate(utts[:6]):
        sf.write(src / "my_corpus" / f"utt{i}.wav", audio, 16000)
        (src / "my_corpus" / f"utt{i}.txt").write_text(text, encoding="utf-8")
        sf.write(src / "raw_audio" / f"raw{i}.flac", audio, 16000)
        tsv.append(f"{src / 'my_corpus' / f'utt{i}.wav'}\t{text}")
    (src / "list.tsv").write_text("\n".join(tsv) + "\n", encoding="utf-8")


def fairseq_checkpoints(work: Path) -> None:
    """`wav2vec_small.pt` and a K-wav2vec multi-task model with its dictionaries, in fairseq's layout
    (tiny), in the working directory as the README expects them; the K-wav2vec dictionaries hold
    the jamo and syllables of the prepared KsponSpeech vocabularies."""
    from test_checkpoints_train import fairseq_blob

    torch.save(fairseq_blob(multitask=False), work / "wav2vec_small.pt")
    blob = fairseq_blob(multitask=True)
    graphemes = [t for t in Vocabulary.load(work / "data/kspon/vocab_grapheme.json").tokens if not t.startswith("<")]
    syllables = [t for t in Vocabulary.load(work / "data/kspon/vocab_syllable.json").tokens if not t.startswith("<")]
    (work / "dict.ltr.txt").write_text("".join(f"{t} 9\n" for t in graphemes), encoding="utf-8")
    (work / "add_dict.ltr.txt").write_text("".join(f"{t} 9\n" for t in syllables), encoding="utf-8")
    g = torch.Generator().manual_seed(3)
    for name, n in (("proj", len(graphemes) + 4), ("proj2", len(syllables) + 4)):  # + fairseq's 4 specials
        blob["model"][f"w2v_encoder.{name}.weight"] = torch.randn(n, 32, generator=g)
        blob["model"][f"w2v_encoder.{name}.bias"] = torch.randn(n, generator=g)
    torch.save(blob, work / "kwav2vec_mtl.pt")


# ------------------------------------------------------------------------------------ running
def run_kwav2vec(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # LightningCLI and argparse exit
        return int(e.code or 0)


def training_flags(argv: list[str]) -> list[str]:
    flags = list(CPU)
    if "--model.init_from" not in argv and "--ckpt_path" not in argv:  # from scratch: tiny instead of BASE
        flags += ["--model.model", "tiny", "--model.model_overrides", json.dumps(TINY)]
    if argv[0] == "pretrain":
        flags += ["--model.warmup_steps", "1", "--model.total_steps", "2", "--data.max_samples_per_batch", "200000"]
    else:
        flags += ["--model.total_steps", "2", "--model.mask_channel_length", "8", "--data.max_samples_per_batch", "300000"]
    return flags


def run_readme_line(line: str, work: Path, src: Path, capsys) -> None:
    argv = shlex.split(re.sub(r"(?<![\w./])/data/", f"{src}/", line))  # absolute /data/... only
    if argv[0] == "srun":
        argv = argv[1:]
    if argv[0] == "make":
        target = argv[1]
        if shutil.which("make") is None:
            pytest.skip("no make on this machine")
        if target == "lint" and Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
            proc = subprocess.run(["make", "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
        else:
            proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"README line {line!r}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return
    assert argv[0] == "kwav2vec", f"README line {line!r}: tests/test_readme.py does not know how to run it"
    args = argv[1:]
    gpu_only = any(marker in line for marker in GPU_ONLY) or "conf/trainer/ddp.yaml" in line and "finetune" in line
    if gpu_only:
        if args[0] in ("pretrain", "finetune"):
            assert run_kwav2vec([*args, "--print_config"]) == 0, f"README line {line!r}"
            assert "strategy: ddp" in capsys.readouterr().out
        else:
            evaluate.build_parser().parse_args(args[1:])
        return
    if args[0] in ("pretrain", "finetune"):
        args += training_flags(args)
    if args[0] in ("evaluate", "transcribe"):
        args += ["--beam-width", "4"]  # an untrained model's flat outputs make beam 100 take minutes
    code = run_kwav2vec(args)
    assert code == 0, f"README line {line!r} exited with {code}"


def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) > 20
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    work.mkdir()
    make_sources(src)
    (work / "conf").symlink_to(REPO / "conf")
    for i, name in enumerate(("a.wav", "b.flac")):
        audio, _ = demo_utterances(2)[i]
        sf.write(work / name, audio, 16000)
    monkeypatch.chdir(work)
    timings: list[tuple[float, str]] = []
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    for line in commands:
        if "wav2vec_small.pt" in line and not (work / "wav2vec_small.pt").exists():
            fairseq_checkpoints(work)
        start = time.perf_counter()
        run_readme_line(line, work, src, capsys)
        capsys.readouterr()
        timings.append((time.perf_counter() - start, line))  # keep each command's output out of the next one's failure report
    if os.environ.get("KWAV2VEC_README_TIMINGS"):
        Path(os.environ["KWAV2VEC_README_TIMINGS"]).write_text("".join(f"{t:6.1f} {c}\n" for t, c in timings))
    # what the README says the commands leave behind
    assert (work / "runs/finetune/version_0/checkpoints/last.ckpt").is_file()
    assert (work / "results/eval_clean/summary.json").is_file()
    assert (work / "hf_model/config.json").is_file() and (work / "from_hub.ckpt").is_file()
    assert (work / "runs/mtl_try2/version_0/checkpoints").is_dir()
    assert list((work / "runs/tb").rglob("events.out.tfevents*"))
