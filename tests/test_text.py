"""The text side of paper 002: organ sentences of French reports (§3.3), the retrained WordPiece
tokenizer and the text encoder (§4.1)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from medssl.errors import ConfigError, DataContractError
from medssl.text import concepts, tokens
from medssl.text.concepts import ORGAN_TERMS, organ_text, split_sentences, tag_reports
from medssl.text.tokens import cached_encode, encode, load_tokenizer, train_tokenizer


def organs_of(sentence: str) -> dict[str, bool]:
    """organ -> negated, for a one-sentence report."""
    table = tag_reports(pd.DataFrame({"exam_id": ["x"], "text": [sentence]}))
    assert set(table["sentence_index"]) <= {0}
    return dict(zip(table["organ"], table["negated"], strict=True))


# ---------------------------------------------------------------------------- concept tagging


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Pas de dilatation des cavités pyélocalicielles.", {"kidney": True}),
        ("Les deux reins sont de taille normale.", {"kidney": False}),
        ("Parenchyme rénal bien différencié.", {"kidney": False}),
        ("Loge rénale gauche libre.", {"kidney": False}),
        ("Bonne différenciation cortico-médullaire.", {"kidney": False}),
        ("Hydronéphrose droite modérée, sans obstacle visible.", {"kidney": False}),
        ("Lithiase rénale droite de 6 mm.", {"kidney": False}),
        ("RD : 11 cm, RG : 10,5 cm.", {"kidney": False}),
        ("REINS NORMAUX.", {"kidney": False}),
        ("renale gauche sans anomalie.", {"kidney": False}),  # accent and case folded
        ("Foie et rein droit normaux.", {"liver": False, "kidney": False}),
        ("Vésicule biliaire non visualisée.", {"gallbladder": True}),
        ("VB alithiasique, paroi vésiculaire fine.", {"gallbladder": False}),
        ("Paroi vésicale régulière.", {"bladder": False}),
        ("Pancréas homogène, canal de Wirsung fin.", {"pancreas": False}),
        ("Rate de 11.5 cm.", {"spleen": False}),
        ("Voies biliaires intra-hépatiques fines.", {"liver": False}),
        ("Rein droit non dilaté et rein gauche dilaté.", {"kidney": False}),  # not every one
        ("Ni le rein droit ni le rein gauche ne sont dilatés.", {"kidney": True}),
        # no organ: none named, a symptom or diagnosis of the indication, other structures,
        # a lower-case "abbreviation"
        ("Pas d'épanchement intra-abdominal.", {}),
        ("Indication : colique néphrétique droite.", {}),
        ("Indication : suivi d'une insuffisance rénale.", {}),
        ("Indication : bilan hépatique perturbé.", {}),
        ("Artères rénales perméables.", {}),
        ("Vésicules séminales symétriques.", {}),
        ("Distension de l'angle splénique du côlon.", {}),
        ("Le rd est un mot inconnu.", {}),
    ],
)
def test_organ_tagging(sentence, expected):
    assert organs_of(sentence) == expected


def test_mention_table():
    reports = pd.DataFrame(
        {
            "exam_id": ["e1", "e2", "e3", "e4"],
            "title": ["ÉCHOGRAPHIE RÉNALE", None, "ÉCHOGRAPHIE HÉPATIQUE", None],
            "text": [
                "Indication : colique néphrétique. Foie et rein droit normaux.\n"
                "Rate de 11.5 cm; vessie vide. Pas de dilatation des cavités pyélocalicielles.",
                None,
                "   ",
                "Conclusion : examen normal.",
            ],
        }
    )
    table = tag_reports(reports)
    assert list(table.columns) == list(concepts.MENTION_COLUMNS)
    assert {c: str(t) for c, t in table.dtypes.items()} == {
        "exam_id": "string",
        "sentence_index": "int64",
        "sentence": "string",
        "organ": "string",
        "term": "string",
        "negated": "bool",
    }
    rows = [tuple(r) for r in table.itertuples(index=False)]
    assert rows == [
        ("e1", 1, "Foie et rein droit normaux.", "liver", "Foie", False),
        ("e1", 1, "Foie et rein droit normaux.", "kidney", "rein", False),
        ("e1", 2, "Rate de 11.5 cm;", "spleen", "Rate", False),
        ("e1", 3, "vessie vide.", "bladder", "vessie", False),
        (
            "e1",
            4,
            "Pas de dilatation des cavités pyélocalicielles.",
            "kidney",
            "cavités pyélocalicielles",
            True,
        ),
    ]
    # deterministic; an organ subset; no text / no organ: no rows, same columns
    assert tag_reports(reports).equals(table)
    kidney = tag_reports(reports, organs=["kidney"])
    assert list(kidney["sentence_index"]) == [1, 4] and set(kidney["organ"]) == {"kidney"}
    empty = tag_reports(reports.iloc[1:])
    assert empty.empty and list(empty.columns) == list(concepts.MENTION_COLUMNS)
    assert str(empty.dtypes["negated"]) == "bool"
    with pytest.raises(ConfigError, match="unknown organ"):
        tag_reports(reports, organs=["heart"])
    with pytest.raises(DataContractError, match="text"):
        tag_reports(reports[["exam_id"]])


def test_split_sentences():
    assert split_sentences("Rate de 11.5 cm. Rein droit de 10,5 cm; rein gauche normal.") == [
        "Rate de 11.5 cm.",
        "Rein droit de 10,5 cm;",
        "rein gauche normal.",
    ]
    # a new line starting with a capital, a bullet or after a blank line is a new sentence; a
    # wrapped line is not; a heading ending with ':' goes with its line
    text = (
        "REINS :\nDe taille normale.\nLes deux reins sont de taille\nnormale.\n\n"
        "vessie vide\n- rate"
    )
    assert split_sentences(text) == [
        "REINS : De taille normale.",
        "Les deux reins sont de taille normale.",
        "vessie vide",
        "- rate",
    ]
    assert split_sentences("") == split_sentences("  \n ") == split_sentences(None) == []


def test_organ_text():
    mentions = tag_reports(
        pd.DataFrame(
            {
                "exam_id": ["b", "a", "c"],
                "text": [
                    "Rein droit normal. Foie normal. Rein gauche normal. Rein droit normal.",
                    "Pas de dilatation pyélocalicielle.",
                    "Foie normal.",
                ],
            }
        )
    )
    kidney = organ_text(mentions, "kidney")
    assert kidney.to_dict() == {
        "b": "Rein droit normal. Rein gauche normal.",  # report order, each sentence once
        "a": "Pas de dilatation pyélocalicielle.",
    }
    assert kidney.index.name == "exam_id" and str(kidney.dtype) == "string"
    assert organ_text(mentions, "liver").to_dict() == {"b": "Foie normal.", "c": "Foie normal."}
    assert organ_text(mentions, "bladder").empty
    with pytest.raises(ConfigError):
        organ_text(mentions, "heart")


def test_synthetic_reports_kidney_sentences(capsys):
    """The tagger finds exactly the sentences the synthetic archive wrote about the kidneys
    (never its indication), for every statement kind: normal, abnormal, absent."""
    from medssl.data.synth import reports as R

    rng = np.random.default_rng(7)
    drawn = []
    for _ in range(300):
        organs = {o for o in R.ORGAN_ORDER if rng.random() < 0.6}
        drawn.append(R.draw_report(rng, organs, "kidney" in organs and rng.random() < 0.3))
    ids = [f"x{i}" for i in range(len(drawn))]
    mentions = tag_reports(pd.DataFrame({"exam_id": ids, "text": [r.text for r in drawn]}))
    assert capsys.readouterr().err == ""  # no progress bar for a few reports
    kidney = mentions[mentions["organ"] == "kidney"].groupby("exam_id")["sentence"].agg(list)
    for exam_id, report in zip(ids, drawn, strict=True):
        assert kidney.get(exam_id, []) == list(report.kidney_sentences), report.text
    assert {r.kidney for r in drawn} == {"normal", "abnormal", "absent"}
    assert not mentions["sentence"].str.startswith("Indication").any()


def test_lexicon_is_documented_and_light():
    assert set(ORGAN_TERMS) == {"kidney", "liver", "gallbladder", "pancreas", "spleen", "bladder"}
    assert "néphrétique" not in {t for terms in ORGAN_TERMS.values() for t in terms}
    # importing the package loads no NLP or deep-learning library
    code = (
        "import sys, medssl.text\n"
        "heavy = {'torch', 'transformers', 'edsnlp', 'spacy', 'tokenizers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------- tokenizer

CORPUS = [
    "Échographie rénale : les deux reins sont de taille normale.",
    "Pas de dilatation des cavités pyélocalicielles.",
    "Vésicule biliaire alithiasique, à paroi fine.",
    "Foie de taille normale, d'échostructure homogène.",
    "Rate homogène de 11,5 cm; échographie sans particularité.",
] * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return train_tokenizer(CORPUS, tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=400)


def test_tokenizer_keeps_accents_and_is_deterministic(tokenizer_dir, tmp_path):
    assert {p.name for p in tokenizer_dir.iterdir()} == {"vocab.txt", "tokenizer.json"}
    vocab = (tokenizer_dir / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"échographie", "rénale", "pyélocalicielles"} <= set(vocab)
    tokenizer = load_tokenizer(tokenizer_dir)
    ids, _ = encode(tokenizer, ["Échographie rénale"], 8)
    assert tokenizer.decode(ids[0].tolist()) == "échographie rénale"  # lower-cased, accents kept
    assert tokenizer.encode("echographie", add_special_tokens=False).ids != [
        tokenizer.token_to_id("échographie")
    ]
    # the same corpus, the same vocabulary and file (the trainer alone is not deterministic)
    again = train_tokenizer(CORPUS, tmp_path / "again", vocab_size=400)
    for name in ("vocab.txt", "tokenizer.json"):
        assert (again / name).read_bytes() == (tokenizer_dir / name).read_bytes()
    assert json.loads((again / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"
    with pytest.raises(DataContractError, match="no report text"):
        train_tokenizer(["", "  "], tmp_path / "none")


def test_encode_pads_and_truncates(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    long = "les deux reins sont de taille normale " * 10
    ids, mask = encode(tokenizer, ["rate homogène", long, ""], 10)
    assert ids.shape == mask.shape == (3, 10) and ids.dtype == np.int32 and mask.dtype == np.uint8
    n = int(mask[0].sum())
    assert ids[0, 0] == cls and ids[0, n - 1] == sep and (ids[0, n:] == 0).all()
    assert (mask[0, :n] == 1).all() and (mask[0, n:] == 0).all()
    assert mask[1].all() and ids[1, 0] == cls and ids[1, -1] == sep  # truncated, [SEP] kept
    assert list(ids[2, :2]) == [cls, sep] and mask[2].sum() == 2
    assert encode(tokenizer, [], 10)[0].shape == (0, 10)
    with pytest.raises(ConfigError):
        encode(tokenizer, ["x"], 1)
    with pytest.raises(DataContractError):
        encode(tokenizer, [None], 10)


def test_load_tokenizer_sources(tokenizer_dir, tmp_path):
    vocab_only = tmp_path / "vocab-only"
    vocab_only.mkdir()
    (vocab_only / "vocab.txt").write_bytes((tokenizer_dir / "vocab.txt").read_bytes())
    texts = ["Échographie rénale normale.", "Rate de 11,5 cm"]
    a = encode(load_tokenizer(tokenizer_dir), texts, 12)
    b = encode(load_tokenizer(vocab_only), texts, 12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ConfigError, match="no tokenizer there"):
        load_tokenizer(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable tokenizer") as info:
        load_tokenizer(broken)
    assert "\n" not in str(info.value)


def test_cached_encode_reuses_the_arrays(tokenizer_dir, tmp_path):
    cache = tmp_path / "cache"
    texts = ["Rein droit normal.", "Rate de 11,5 cm."]
    ids, mask = cached_encode(tokenizer_dir, texts, 16, cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("tokens-") and files[0].suffix == ".npz"
    stamp = files[0].stat().st_mtime_ns
    expected = encode(load_tokenizer(tokenizer_dir), texts, 16)
    assert np.array_equal(ids, expected[0]) and np.array_equal(mask, expected[1])
    ids2, mask2 = cached_encode(tokenizer_dir, list(texts), 16, cache)  # reused, not rewritten
    assert np.array_equal(ids, ids2) and np.array_equal(mask, mask2)
    assert list(cache.iterdir()) == files and files[0].stat().st_mtime_ns == stamp
    # another max_length or other texts: another key
    cached_encode(tokenizer_dir, texts, 8, cache)
    cached_encode(tokenizer_dir, texts[::-1], 16, cache)
    assert len(list(cache.iterdir())) == 3
    # a corrupt cache file is rebuilt
    files[0].write_bytes(b"garbage")
    ids3, _ = cached_encode(tokenizer_dir, texts, 16, cache)
    assert np.array_equal(ids, ids3)
    with np.load(files[0]) as stored:
        assert np.array_equal(stored["ids"], ids)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left
    assert tokens.cache_key(tokenizer_dir, ["ab"], 16) != tokens.cache_key(
        tokenizer_dir, ["a", "b"], 16
    )


# ------------------------------------------------------------------------------- text encoder


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _padded_twice(tokenizer_dir, short: int, long: int):
    import torch

    tokenizer = load_tokenizer(tokenizer_dir)
    texts = ["Les deux reins sont de taille normale.", "Rate homogène."]
    return [tuple(torch.from_numpy(a) for a in encode(tokenizer, texts, n)) for n in (short, long)]


@pytest.mark.parametrize("pooling", ["max", "mean", "cls"])
def test_text_encoder_shape_and_padding(tokenizer_dir, pooling, no_network):
    import torch

    from medssl.text.encoder import build_text_encoder

    torch.manual_seed(0)
    vocab = len((tokenizer_dir / "vocab.txt").read_text().splitlines())
    encoder = build_text_encoder(vocab, max_length=32, pooling=pooling).eval()
    assert encoder.output_dim == 128
    (ids, mask), (ids_long, mask_long) = _padded_twice(tokenizer_dir, 14, 32)
    with torch.no_grad():
        short, long = encoder(ids, mask), encoder(ids_long, mask_long)
    assert short.shape == (2, 128)
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)  # padding changes nothing
    assert not torch.allclose(short[0], short[1])


def test_text_encoder_from_local_weights(tokenizer_dir, tmp_path, no_network):
    import torch
    from transformers import BertConfig, BertModel, CamembertConfig, CamembertModel

    from medssl.text.encoder import build_text_encoder

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    saved = BertModel(BertConfig(vocab_size=50, max_position_embeddings=40, **small))
    saved.save_pretrained(tmp_path / "bert")
    encoder = build_text_encoder(300, weights=tmp_path / "bert", max_length=32).eval()
    assert encoder.output_dim == 32
    assert encoder.backbone.get_input_embeddings().num_embeddings == 300  # resized
    layer, saved_layer = encoder.backbone.encoder.layer[0], saved.encoder.layer[0]
    assert torch.equal(layer.output.dense.weight, saved_layer.output.dense.weight)

    # CamemBERT (RoBERTa): position ids start after its own padding id (1), not our [PAD] (0)
    camembert = CamembertModel(
        CamembertConfig(vocab_size=60, max_position_embeddings=34, pad_token_id=1, **small)
    )
    camembert.save_pretrained(tmp_path / "camembert")
    encoder = build_text_encoder(300, weights=str(tmp_path / "camembert"), max_length=32).eval()
    (ids, mask), (ids_long, mask_long) = _padded_twice(tokenizer_dir, 14, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(ids, mask), encoder(ids_long, mask_long), atol=1e-5, rtol=0
        )
    with pytest.raises(ConfigError, match="exceeds the encoder's 32 positions"):
        build_text_encoder(300, weights=tmp_path / "camembert", max_length=33)


def test_text_encoder_errors(tmp_path):
    from medssl.text.encoder import build_text_encoder

    with pytest.raises(ConfigError, match="weights folder not found") as info:
        build_text_encoder(100, weights=tmp_path / "camembert-base")
    assert str(tmp_path / "camembert-base") in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a loadable text encoder") as info:
        build_text_encoder(100, weights=tmp_path / "empty")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="multiple of heads"):
        build_text_encoder(100, hidden=30, heads=4)
    with pytest.raises(ConfigError, match="pooling"):
        build_text_encoder(100, pooling="sum")
