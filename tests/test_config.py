from pathlib import Path

import pytest

from medssl.config import Params, load_params
from medssl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_yaml_matches_the_models():
    params = load_params(ROOT / "params.yaml", required=True)
    assert params.data.size == "small"
    assert params.split.fractions["unlabeled"] == pytest.approx(0.946)
    # every key in the file is a typed field: dumping gives back the same sections
    assert set(params.dump()) == {
        "data",
        "ingest",
        "validate",
        "split",
        "pairs",
        "pretrain",
        "supervised",
        "pica",
        "lsd",
        "deepcluster",
        "fixmatch-onehead",
        "fixmatch-twohead",
        "lesion-recognition",
        "convirt",
        "simclr",
        "faster-rcnn",
        "train",
        "evaluate",
        "register",
        "predict",
        "tune",
    }


def test_defaults_without_a_file(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == Params()
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml", required=True)


def test_overrides_are_typed_and_reach_into_mappings(tmp_path):
    p = load_params(
        tmp_path / "none.yaml",
        [
            "data.seed=7",
            "data.size=tiny",
            "split.label_fractions=[0.5, 1.0]",
            "split.fractions.train=0.02",
            "split.fractions.unlabeled=0.956",
        ],
    )
    assert p.data.seed == 7 and isinstance(p.data.seed, int)
    assert p.data.size == "tiny"
    assert p.split.label_fractions == [0.5, 1.0]
    assert p.split.fractions["train"] == 0.02


def test_file_values_then_overrides(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data:\n  seed: 3\n  size: tiny\n")
    p = load_params(f, ["data.seed=4"])
    assert (p.data.seed, p.data.size, p.data.kind) == (4, "tiny", "abdominal-us")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.sizee=tiny", "unknown parameter 'data.sizee'"),
        ("nosuch.key=1", "unknown parameter 'nosuch'"),
        ("data.seed=abc", "parameter 'data.seed'"),
        ("data.size=huge", "parameter 'data.size'"),
        ("validate.workers=-1", "parameter 'validate.workers'"),
        ("split.fractions.train=0.5", "fractions must sum to 1"),
        ("split.label_fractions=[0, 1]", "label_fractions must be in"),
        ("data.seed", "expected section.key=value"),
        ("data.seed.x=1", "'seed' is not a section"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError) as info:
        load_params(tmp_path / "none.yaml", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(f)


def test_yaml_1_1_words_stay_strings(tmp_path):
    p = load_params(tmp_path / "none.yaml", ["register.experiment=off", "train.amp=false"])
    assert p.register_.experiment == "off"
    assert p.train.amp is False
