"""The `kwav2vec` command: one entry point, a subcommand per job.

Training subcommands (`pretrain`, `finetune`) are LightningCLI programs; the others are small argparse
programs. Each subcommand lives in its own module and is imported only when it runs, so
`kwav2vec --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

DEBUG_ENV = "KWAV2VEC_DEBUG"  # set to 1 for tracebacks, as --debug does

# name -> ("module" or "module:function", one-line help); the function (default `main`) takes the
# remaining argv and returns an exit code (or None for 0).
SUBCOMMANDS: dict[str, tuple[str, str]] = {}


def register(name: str, module: str, help_text: str) -> None:
    SUBCOMMANDS[name] = (module, help_text)


register("pretrain", "kwav2vec.train_cli:pretrain_main", "self-supervised wav2vec 2.0 pretraining (LightningCLI: fit, validate)")
register("finetune", "kwav2vec.train_cli:finetune_main", "multi-task grapheme + syllable CTC fine-tuning (LightningCLI: fit, validate, test)")
register("normalize", "kwav2vec.text.cli", "normalize transcripts and show jamo/syllable tokens")
register("prepare", "kwav2vec.data.prepare_cli", "check a corpus and write its manifest, rejects, report and vocabularies")
register("transcribe", "kwav2vec.inference.transcribe", "print the transcript of audio files (greedy, beam or joint decoding)")
register("evaluate", "kwav2vec.inference.evaluate", "decode a labelled manifest: per-utterance TSV, CER/WER/sWER/JER/OOV summary, timing")
register("convert", "kwav2vec.checkpoints.cli", "import fairseq / Hugging Face / torchaudio checkpoints, export to Hugging Face")


def usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [
        "usage: kwav2vec <command> [options]",
        "",
        "Korean speech recognition with wav2vec 2.0.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Run `kwav2vec <command> --help` for a command's options. Errors are one line; --debug (or",
              f"{DEBUG_ENV}=1) shows the traceback."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from kwav2vec import __version__

        print(f"kwav2vec {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"kwav2vec: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    debug = "--debug" in rest or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    rest = [a for a in rest if a != "--debug"]
    module_name, _, function = SUBCOMMANDS[name][0].partition(":")
    entry = getattr(importlib.import_module(module_name), function or "main")
    try:
        code = entry(rest)
    except Exception as err:  # noqa: BLE001 - one line naming the problem; the traceback on request
        if debug:
            raise
        print(f"kwav2vec {name}: error: {error_line(err)} (--debug or {DEBUG_ENV}=1 shows the traceback)",
              file=sys.stderr)
        return 2 if isinstance(err, EXPECTED_ERRORS) else 1
    return int(code or 0)


# Errors about the user's input (files, options, data): their message says what is wrong. Others are
# named with their type, since the message alone may not explain them.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError)


def error_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or repr(err)
    return text if isinstance(err, EXPECTED_ERRORS) else f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
