"""Every shipped YAML in conf/ parses against the classes it configures (LightningCLI's own
parser, so an unknown or mistyped key fails here rather than at the start of a training run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kwav2vec.train_cli import run

CONF = Path(__file__).resolve().parents[1] / "conf"
PRETRAIN_DATA = sorted(p for p in (CONF / "data").glob("*.yaml") if p.stem.endswith("_pretrain"))
FINETUNE_DATA = sorted(p for p in (CONF / "data").glob("*.yaml") if not p.stem.endswith("_pretrain"))
TRAINERS = sorted((CONF / "trainer").glob("*.yaml"))


def _combinations():
    for job, data_files in (("pretrain", PRETRAIN_DATA), ("finetune", FINETUNE_DATA)):
        for recipe in sorted((CONF / job).glob("*.yaml")):
            yield job, recipe, data_files[0], TRAINERS[0]
        for data in data_files:
            yield job, sorted((CONF / job).glob("*.yaml"))[0], data, TRAINERS[0]
    for trainer in TRAINERS:
        yield "finetune", CONF / "finetune" / "mtl.yaml", FINETUNE_DATA[0], trainer


def test_every_yaml_is_covered():
    covered = {p for combo in _combinations() for p in combo[1:]}
    shipped = set(CONF.rglob("*.yaml"))
    assert shipped - covered == set()
    assert len(shipped) >= 15


@pytest.mark.parametrize(
    "job,recipe,data,trainer",
    list(_combinations()),
    ids=lambda v: v.relative_to(CONF).as_posix() if isinstance(v, Path) else v,
)
def test_config_parses(job, recipe, data, trainer, capsys):
    args = ["fit", "--config", str(recipe), "--config", str(data), "--config", str(trainer), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        run(job, args)
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err
    merged = yaml.safe_load(out.out)
    # what the files say (later files overriding earlier ones) is what the parser kept
    expected: dict[tuple[str, str], object] = {}
    for path in (recipe, data, trainer):
        for section, values in yaml.safe_load(path.read_text()).items():
            expected.update({(section, key): value for key, value in values.items()})
    for (section, key), value in expected.items():
        got = merged[section][key]
        assert got == value or (isinstance(value, list) and list(got) == value), (section, key, got, value)
