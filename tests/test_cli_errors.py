"""Bad input to the `kwav2vec` command: one line naming the file and what was expected, exit code 2,
no traceback unless `--debug` or KWAV2VEC_DEBUG=1 asks for one.

Each case is a defect a new user hit: a missing train manifest was reported as a missing vocabulary
after a 21-frame traceback; an empty or foreign checkpoint raised a bare EOFError or torch's "Please
file an issue"; a YAML error named its line but not its file; a directory given as a checkpoint was
"does not exist"; the outside-the-root hint named an option the CLI does not have.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kwav2vec import cli
from kwav2vec.data.manifest import ManifestError, read_manifest

REPO = Path(__file__).resolve().parents[1]


def run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    (tmp_path / "conf").symlink_to(REPO / "conf")
    (tmp_path / "data").symlink_to(REPO / "data")  # conf/data/demo.yaml names data/demo/...
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KWAV2VEC_DEBUG", raising=False)
    return tmp_path


def test_a_missing_train_manifest_is_named_before_anything_else(work, capsys):
    code = run(["finetune", "fit", "--config", "conf/finetune/demo.yaml", "--data.train_manifest",
                "nope/train.jsonl", "--trainer.max_steps", "1"])
    assert code == 2
    one_error_line(capsys.readouterr().err, "nope/train.jsonl: train manifest not found", "--data.train_manifest")
    code = run(["pretrain", "fit", "--config", "conf/pretrain/demo.yaml", "--data.train_manifest",
                str(REPO / "data/demo/unlabeled.jsonl"), "--data.val_manifest", "gone/dev.jsonl"])
    assert code == 2
    one_error_line(capsys.readouterr().err, "gone/dev.jsonl: val manifest not found")


def test_a_yaml_error_names_the_file_line_and_column(work, capsys):
    (work / "bad.yaml").write_text("model:\n  lr: [1,\n", encoding="utf-8")
    assert run(["finetune", "fit", "--config", "bad.yaml"]) == 2
    one_error_line(capsys.readouterr().err, "bad.yaml: not valid YAML at line 3, column 1")


@pytest.mark.parametrize("kind", ["empty", "directory", "foreign", "text"])
def test_a_file_that_is_not_a_checkpoint_is_named_by_every_reader(work, capsys, kind):
    path = work / "model.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_text("not a checkpoint")
    expected = {"empty": "empty file (0 bytes)", "directory": "is a directory", "foreign": "checkpoint",
                "text": "not a readable"}[kind]
    audio = str(next((REPO / "data/demo/audio/test").iterdir()))
    manifest = str(REPO / "data/demo/test.jsonl")
    for argv in (["transcribe", str(path), audio],
                 ["evaluate", str(path), manifest],
                 ["convert", "--to", "hf", str(path), str(work / "hf")],
                 ["finetune", "test", "--config", "conf/finetune/demo.yaml", "--config", "conf/data/demo.yaml",
                  "--ckpt_path", str(path)],
                 ["finetune", "fit", "--config", "conf/finetune/demo.yaml", "--config", "conf/data/demo.yaml",
                  "--model.init_from", str(path)]):
        code = run(argv)
        assert code in (1, 2), argv
        err = capsys.readouterr().err
        one_error_line(err, str(path), expected)
        if kind == "foreign":  # says what it found or what it expected instead
            assert "not a" in err or "neither" in err, err


def test_debug_shows_the_traceback(work, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError, match="train manifest not found"):
        cli.main(["finetune", "fit", "--config", "conf/finetune/demo.yaml", "--data.train_manifest", "x.jsonl",
                  "--debug"])
    monkeypatch.setenv("KWAV2VEC_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["finetune", "fit", "--config", "conf/finetune/demo.yaml", "--data.train_manifest", "x.jsonl"])


def test_the_outside_root_hint_names_options_the_cli_has(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "../elsewhere/a.wav", "num_samples": 16000}) + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert "--data.audio_root" in str(info.value) and "--audio-root" in str(info.value)
    assert "allow_outside_root" not in str(info.value)
