"""The synthetic archive's French reports: what paper 002 pairs with kidney images (§3.3-3.4)."""

import re

import numpy as np
import pytest

from medssl.config import SplitConfig
from medssl.data.synth import reports as R
from medssl.data.synth.archive import plan_archive

# what a concept tagger would take for the kidneys (UMLS: kidney, renal, pyelocaliceal…)
KIDNEY = re.compile(
    r"\b(?:reins?|rénal|rénale|rénales|rénaux|RD|RG|pyélocalicielles?|hydronéphrose|néphrétique)\b",
    re.IGNORECASE,
)
NOT = r"(?<!pas de )(?<!sans )(?<!absence de )(?<!ni de )(?<!non )"
FINDING = re.compile(NOT + r"\b(?:kyst\w*|hydronéphrose|dilatation|dilatées)\b", re.IGNORECASE)
CYST = re.compile(NOT + r"\bkyst", re.IGNORECASE)
ORGAN_WORDS = {  # words that describe an organ outside the indication
    "liver": r"\bfoie\b",
    "gallbladder": r"\bvésicul",
    "pancreas": r"\bpancréas\b|\bwirsung\b",
    "spleen": r"\brate\b|\bsplénomégalie\b",
    "bladder": r"\bvessie\b",
}
ORGANS = ("liver", "gallbladder", "pancreas", "spleen", "kidney", "bladder")
N = 10_000


def body(report: R.Report) -> list[str]:
    """The sentences after the indication (which may name a renal disease: leave it)."""
    assert report.sentences[0].startswith("Indication : ")
    return list(report.sentences[1:])


def draws(seed: int, organs, abnormal: bool, n: int = N) -> list[R.Report]:
    rng = np.random.default_rng(seed)
    return [R.draw_report(rng, organs, abnormal) for _ in range(n)]


def share(reports, statement: str) -> float:
    return float(np.mean([r.kidney == statement for r in reports]))


@pytest.mark.parametrize("seed", [0, 1])
def test_kidney_statement_rates(seed):
    abnormal = draws(seed, {"liver", "kidney", "spleen"}, True)
    normal = draws(seed + 100, {"kidney", "bladder"}, False)
    assert share(abnormal, "normal") == pytest.approx(R.MISSED_FINDING_RATE, abs=0.01)
    assert share(abnormal, "absent") == pytest.approx(1 - R.KIDNEY_ABNORMAL_MENTION_RATE, abs=0.01)
    assert share(normal, "abnormal") == pytest.approx(R.FALSE_FINDING_RATE, abs=0.006)
    assert 1 - share(normal, "absent") == pytest.approx(R.MENTION_RATE, abs=0.015)
    assert np.mean([r.contradicts for r in abnormal]) == pytest.approx(0.05, abs=0.01)
    assert np.mean([r.contradicts for r in normal]) == pytest.approx(0.02, abs=0.006)
    # the reported finding: cyst or dilatation, about half each (the renderer's odds)
    found = [r.finding for r in abnormal if r.kidney == "abnormal"]
    assert np.mean([f == "cyst" for f in found]) == pytest.approx(R.CYST_RATE, abs=0.03)


def test_text_says_what_the_report_states():
    """The ground truth of `draw_report` is what its text says: checked on the words alone."""
    rng = np.random.default_rng(7)
    for i in range(4000):
        organs = {o for o in ORGANS if rng.random() < 0.6} | {"kidney"}
        r = R.draw_report(rng, organs, bool(i % 2))
        sentences = body(r)
        kidney = [s for s in sentences if KIDNEY.search(s)]
        assert kidney == list(r.kidney_sentences), r.text  # every kidney sentence is tagged
        if r.kidney == "absent":
            assert not kidney and not FINDING.search(r.text), r.text
        elif r.kidney == "normal":
            assert kidney and not FINDING.search(r.text), r.text
        else:
            assert FINDING.search(kidney[0]), r.text  # the finding, then the rest
            assert bool(CYST.search(" ".join(kidney))) == (r.finding == "cyst"), r.text
        assert R.write_report(np.random.default_rng(i), organs, bool(i % 2)) == (
            (d := R.draw_report(np.random.default_rng(i), organs, bool(i % 2))).title,
            d.text,
        )


def test_only_organs_seen_are_described():
    rng = np.random.default_rng(3)
    for _ in range(4000):
        organs = {o for o in ORGANS if rng.random() < 0.4}
        r = R.draw_report(rng, organs, False)
        text = " ".join(body(r))
        if "kidney" not in organs:
            assert r.kidney == "absent" and not r.kidney_sentences
            assert not KIDNEY.search(text), r.text
        for organ, words in ORGAN_WORDS.items():
            if organ not in organs:
                assert not re.search(words, text, re.IGNORECASE), (organ, r.text)
    with pytest.raises(ValueError, match="kidney frames"):
        R.draw_report(rng, {"liver"}, True)


def test_every_report_is_french_text_ending_with_its_conclusion():
    rng = np.random.default_rng(11)
    for organs in [set(), {"bladder"}, {"kidney"}, set(ORGANS)]:
        for abnormal in [False, True] if "kidney" in organs else [False]:
            for _ in range(500):
                r = R.draw_report(rng, organs, abnormal)
                assert r.title is None or r.title in R.TITLES.values()
                assert r.sentences[-1].startswith("Conclusion : ")
                assert r.text.count("Conclusion") == 1 and r.text.endswith(".")
                assert all(s.endswith(".") and s[0].isupper() for s in r.sentences), r.text
                assert "{" not in r.text and "  " not in r.text
                assert re.search(r"[éèàç]", r.text)  # French, accented
                if r.kidney == "abnormal":
                    assert KIDNEY.search(r.sentences[-1]), r.text


def test_kidney_vocabulary_is_varied():
    text = " ".join(
        s for a in (False, True) for r in draws(5, set(ORGANS), a, 3000) for s in r.kidney_sentences
    ).lower()
    for words in [
        "rein droit", "rein gauche", "les deux reins", "reins ", "rénal ", "rénale", "rénaux",
        "rénales", "parenchyme rénal", "loges rénales", "cortex rénal", "cavités pyélocalicielles",
        "pyélocalicielle ", "rd : ", "rg : ", "pas de dilatation des cavités pyélocalicielles.",
        "absence de lithiase rénale.", "reins sans particularité.", "kyste cortical simple du rein",
        "kystes rénaux multiples", "hydronéphrose", "dilatation pyélocalicielle gauche modérée",
        "foie et rein droit", "rein gauche de taille normale",
    ]:  # fmt: skip
        assert words in text, words


@pytest.fixture(scope="module")
def paper_plan():
    return plan_archive("paper", 0, SplitConfig().fractions)


def test_archive_reports_mention_kidneys_like_paper_002(paper_plan):
    m = paper_plan.manifest
    kidney_frames = m.assign(k=["kidney" in o for o in paper_plan.organs]).groupby("exam_id")["k"]
    has_kidney = kidney_frames.any()
    abnormal = (
        m.assign(a=paper_plan.kidney_abnormal)
        .groupby("exam_id")["a"]
        .any()
        .reindex(has_kidney.index)
    )
    text = paper_plan.reports.set_index("exam_id")["text"].reindex(has_kidney.index)
    after_indication = text.str.split(". ", n=1, regex=False).str[1]
    mentions = after_indication.str.contains(KIDNEY)
    finding = after_indication.str.contains(FINDING)
    assert 0.80 <= mentions[has_kidney].mean() <= 0.90  # paper 002: 5,891 / 6,960 = 0.85
    assert not mentions[~has_kidney].any() and (~has_kidney).sum() > 50
    expected = R.KIDNEY_ABNORMAL_MENTION_RATE - R.MISSED_FINDING_RATE
    assert finding[abnormal].mean() == pytest.approx(expected, abs=0.03)
    assert finding[has_kidney & ~abnormal].mean() == pytest.approx(R.FALSE_FINDING_RATE, abs=0.01)


def test_reports_are_deterministic():
    organs = {"liver", "kidney", "bladder"}
    texts = [[r.text for r in draws(s, organs, True, 50)] for s in (4, 4, 5)]
    assert texts[0] == texts[1] and texts[0] != texts[2]
    a = plan_archive("small", 3, SplitConfig().fractions).reports
    b = plan_archive("small", 3, SplitConfig().fractions).reports
    assert a.equals(b)
