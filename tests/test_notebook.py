"""notebooks/evaluate.ipynb runs headless against a tiny checkpoint made here, so it never rots.

The checkpoint is a random tiny HierarchicalFineTuner with the demo corpus's vocabularies, saved as
Lightning's checkpointing does; the manifest is a handful of demo test utterances (some with
syllables outside the syllable vocabulary) with absolute audio paths. The notebook gets both
through its environment variables and runs in a kernel of this interpreter (a kernelspec written
to a temporary JUPYTER_PATH, so a `python3` kernelspec elsewhere on the machine cannot be picked).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from kwav2vec.lit.checkpoint_io import save_module_checkpoint  # noqa: E402
from kwav2vec.lit.finetune import HierarchicalFineTuner  # noqa: E402
from kwav2vec.text.vocab import Vocabulary  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "evaluate.ipynb"
DEMO = REPO / "data" / "demo"
TINY = dict(
    encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
    conv_pos=8, conv_pos_groups=4, final_dim=16,
    conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
)
DECODERS = ["greedy-grapheme", "greedy-syllable", "beam-grapheme", "beam-syllable", "joint-union", "joint-rescore"]
PLOTS = ["cer_by_length.png", "confused_jamo.png", "oov_recovery.png"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = HierarchicalFineTuner(
        model="tiny", model_overrides=TINY, syllable_layers=1, layerdrop=0.0,
        grapheme_vocabulary=str(DEMO / "vocab_grapheme.json"), syllable_vocabulary=str(DEMO / "vocab_syllable.json"),
    )
    with torch.no_grad():  # lean towards blank: short but non-empty hypotheses, quick beam searches
        model.grapheme_head.proj.bias[0] = 2.0
        model.syllable_head.proj.bias[0] = 4.0
    return Path(save_module_checkpoint(model, folder / "tiny.ckpt"))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Five demo test utterances of different lengths, three with out-of-vocabulary syllables."""
    known = set(Vocabulary.load(DEMO / "vocab_syllable.json").symbols)
    rows = [json.loads(line) for line in (DEMO / "test.jsonl").read_text(encoding="utf-8").splitlines() if line]
    rows.sort(key=lambda r: r["num_samples"])
    oov = [r for r in rows if any(c != " " and c not in known for c in r["norm"])]
    clean = [r for r in rows if r not in oov]
    chosen = [clean[0], clean[len(clean) // 2], *oov[:3]]
    folder = tmp_path_factory.mktemp("manifest")
    path = folder / "test.jsonl"
    path.write_text(
        "".join(json.dumps({**r, "audio": str((DEMO / r["audio"]).resolve())}, ensure_ascii=False) + "\n" for r in chosen),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def kernel_path(tmp_path) -> Path:
    """A JUPYTER_PATH whose `python3` kernel is this interpreter."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (kwav2vec tests)", "language": "python",
    }))
    return tmp_path / "jupyter"


def output_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.extend(v for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"notebooks/evaluate.ipynb: clear the outputs of cells {dirty} before committing"


@pytest.mark.slow
def test_notebook_runs_headless(checkpoint, manifest, kernel_path, tmp_path, monkeypatch):
    out = tmp_path / "results"
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("KWAV2VEC_CKPT", str(checkpoint))
    monkeypatch.setenv("KWAV2VEC_MANIFEST", str(manifest))
    monkeypatch.setenv("KWAV2VEC_BEAM_WIDTH", "8")  # the searches, not the notebook, would dominate
    monkeypatch.setenv("KWAV2VEC_EVAL_OUT", str(out))
    # the random model's grapheme head writes jamo, so its transcripts have substitutions to plot
    monkeypatch.setenv("KWAV2VEC_CONFUSION_DECODER", "greedy-grapheme")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    try:
        client.execute()  # raises CellExecutionError naming the cell and the traceback
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # to look at when it fails

    table = [c for c in nb.cells if "metrics-table" in c.metadata.get("tags", [])]
    assert len(table) == 1
    text = output_text(table[0])
    missing = [name for name in DECODERS if f"| {name} |" not in text]
    assert not missing, f"decoders missing from the metrics table: {missing}\n{text}"

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["decoders"]) == DECODERS
    assert summary["scored"] == 5
    assert summary["decoders"]["greedy-grapheme"]["oov_syllables"] > 0
    assert [p for p in PLOTS if not (out / p).is_file()] == []
    everything = "\n".join(output_text(c) for c in nb.cells)
    assert "greedy-grapheme: " in everything and "left out" not in everything
