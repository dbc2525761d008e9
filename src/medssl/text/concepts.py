"""Organ concept tagging of French report sentences (paper 002 §3.3, without UMLS).

Paper 002 splits each ultrasound report into sentences and keeps, for an organ, the sentences
holding a word whose UMLS concept (semantic type "Body part, organ or organ component", found by
QuickUMLS) refers to that organ. UMLS is licensed and not available here, so a French lexicon
(`ORGAN_TERMS`) stands in for it, matched with AP-HP's `edsnlp` (spaCy) pipeline:
`eds.sentences` (sentence split; `;` also ends a sentence, a decimal point as in "11.5" does not),
`eds.normalizer` (case and accent folding), `eds.matcher` (lexicon, longest match wins) and
`eds.negation` (French negation cues: "pas de", "absence de", "sans", "non", "ni", …).

Decisions (tests pin them):

* A sentence is tagged for an organ when it names the organ, a part of it (calyces, pelvis,
  cortex, Wirsung duct, bladder wall, …) or an imaging finding that is by definition of that
  organ and replaces its name in reports (hydronéphrose, hépatomégalie, splénomégalie); the
  paper's semantic type, "Body part, organ or organ component", is the core of it. Adjectives
  are tagged inside disease names ("lithiase rénale", "stéatose hépatique"): such sentences
  describe the organ. Symptoms, diagnoses and procedures, which come with the indication rather
  than from the images, are not: **"colique néphrétique" is not tagged** ("néphrétique" lives
  only in that symptom, the reason for the exam, not a description of the kidney; "rénal" is the
  anatomical adjective), nor "pancréatite", "cystite", "néphrectomie", "cholécystectomie", and
  "insuffisance rénale", "bilan hépatique" are matched as non-organ terms so that their organ
  adjective does not count.
* Another structure named with an organ adjective maps, in UMLS, to its own concept, so it
  does not tag the organ (`NOT_ORGAN_TERMS`: the longer match wins, then is dropped):
  renal/splenic/hepatic vessels, seminal vesicles, the splenic and hepatic flexures of the
  colon. The extrahepatic bile ducts (VBP, cholédoque) are part of no listed organ, so they are
  not in the lexicon.
* Upper-case abbreviations (RD, RG, VB, VBIH) match case-sensitively; every other term matches
  whatever the case and accents ("REINS", "renale").
* `negated` is True when every mention of the organ in the sentence lies in the scope of a
  negation: the *statement* about the organ is negative ("Pas de dilatation des cavités
  pyélocalicielles", "Vésicule biliaire non visualisée"), not "the organ is absent". Negated
  sentences are kept: "no dilatation" is how a normal kidney is described, and paper 002 pairs
  every sentence mentioning the organ with its images.
* Sentences: a newline ends a sentence when the next line starts with a capital or a bullet, a
  blank line always does; a heading line ending with ":" ("REINS :") is joined to the line after
  it. Whitespace inside a sentence is collapsed to single spaces. The report title is not
  tagged (it names the exam, it does not describe an organ).

edsnlp (and through it spaCy and torch) is imported on first use, not on `import`.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm.auto import tqdm

from medssl.errors import ConfigError, DataContractError

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

PROGRESS_MIN_REPORTS = 2000  # a progress bar from this many reports on
MENTION_COLUMNS = ("exam_id", "sentence_index", "sentence", "organ", "term", "negated")
_NOT_ORGAN = "_not_organ"

ORGAN_TERMS: dict[str, tuple[str, ...]] = {
    "kidney": (
        "rein", "reins", "rénal", "rénale", "rénaux", "rénales",
        "loge rénale", "loges rénales", "parenchyme rénal", "cortex rénal", "sinus rénal",
        "cavités pyélocalicielles", "cavités pyélo-calicielles", "cavité pyélocalicielle",
        "pyélocaliciel", "pyélocalicielle", "pyélocaliciels", "pyélocalicielles",
        "pyélo-caliciel", "pyélo-calicielle", "pyélo-caliciels", "pyélo-calicielles",
        "caliciel", "calicielle", "caliciels", "calicielles", "calice", "calices",
        "bassinet", "bassinets", "pyélon", "pyélons", "pyélique", "pyéliques",
        "cortico-médullaire", "cortico-médullaires", "corticomédullaire", "corticomédullaires",
        "hydronéphrose", "hydronéphroses", "urétéro-hydronéphrose", "urétérohydronéphrose",
        "RD", "RG",
    ),
    "liver": (
        "foie", "foies", "hépatique", "hépatiques",
        "parenchyme hépatique", "lobe hépatique", "hile hépatique",
        "voies biliaires intra-hépatiques", "voies biliaires intrahépatiques", "VBIH",
        "hépatomégalie",
    ),
    "gallbladder": (
        "vésicule biliaire", "vésicules biliaires", "vésicule",
        "vésiculaire", "vésiculaires", "cholécyste", "VB",
    ),
    "pancreas": (
        "pancréas", "pancréatique", "pancréatiques", "canal de Wirsung", "Wirsung",
    ),
    "spleen": (
        "rate", "rates", "splénique", "spléniques", "ratelle", "ratelles", "splénomégalie",
    ),
    "bladder": (
        "vessie", "vessies", "vésical", "vésicale", "vésicaux", "vésicales",
    ),
}  # fmt: skip
"""Organ -> French words for it and its parts, standing in for UMLS (paper 002 §3.3)."""

# Other structures named with an organ word: matched so that the longer match wins, then dropped.
NOT_ORGAN_TERMS: tuple[str, ...] = (
    "artère rénale", "artères rénales", "veine rénale", "veines rénales",
    "artère splénique", "artères spléniques", "veine splénique", "veines spléniques",
    "angle splénique", "angle hépatique",
    "artère hépatique", "artères hépatiques", "veine hépatique", "veines hépatiques",
    "veine sus-hépatique", "veines sus-hépatiques",
    "vésicule séminale", "vésicules séminales",
    # diagnoses and lab findings of the indication, not what the images show
    "insuffisance rénale", "insuffisance hépatique", "bilan hépatique", "bilan rénal",
    "colique hépatique", "cytolyse hépatique",
)  # fmt: skip


def _check_organs(organs: Sequence[str] | None) -> tuple[str, ...]:
    if organs is None:
        return tuple(ORGAN_TERMS)
    if isinstance(organs, str):
        organs = [organs]
    unknown = [o for o in organs if o not in ORGAN_TERMS]
    if unknown:
        raise ConfigError(f"unknown organ(s) {unknown}: known are {sorted(ORGAN_TERMS)}")
    return tuple(dict.fromkeys(organs))


def _is_abbreviation(term: str) -> bool:
    return term.isupper()


@functools.lru_cache(maxsize=1)
def _pipeline() -> Language:
    """The edsnlp pipeline, built once per process (a few seconds: spaCy, negation patterns)."""
    import edsnlp
    import edsnlp.pipes as eds
    from edsnlp.pipes.core.sentences.terms import punctuation

    words: dict[str, list[str]] = {}
    abbreviations: dict[str, list[str]] = {}
    for label, terms in [*ORGAN_TERMS.items(), (_NOT_ORGAN, NOT_ORGAN_TERMS)]:
        for term in terms:
            (abbreviations if _is_abbreviation(term) else words).setdefault(label, []).append(term)

    nlp = edsnlp.blank("eds")
    nlp.add_pipe(
        eds.sentences(
            punct_chars=sorted({*punctuation, ";"}), hard_newline_count=2, use_bullet_start=True
        )
    )
    nlp.add_pipe(eds.normalizer())
    nlp.add_pipe(eds.matcher(name="organ_terms", terms=words, attr="NORM"))
    nlp.add_pipe(eds.matcher(name="organ_abbreviations", terms=abbreviations, attr="TEXT"))
    nlp.add_pipe(eds.negation())
    return nlp


def _clean(text: str) -> str:
    return " ".join(text.split())


def _sentences(doc: Doc) -> list[tuple[int, str]]:
    """(start character, cleaned text) of each non-empty sentence; heading lines ending with
    ':' joined to the next sentence."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for sent in doc.sents:
        text = _clean(sent.text)
        if not text:
            continue
        if pending is not None:
            start, text = pending[0], f"{pending[1]} {text}"
            pending = None
        else:
            start = sent.start_char
        if text.endswith(":"):
            pending = (start, text)
        else:
            out.append((start, text))
    if pending is not None:
        out.append(pending)
    return out


def split_sentences(text: str) -> list[str]:
    """The sentences of a French report, as `tag_reports` numbers them (whitespace collapsed,
    empty ones dropped)."""
    if not isinstance(text, str) or not text.strip():
        return []
    return [s for _, s in _sentences(_pipeline()(text))]


def _doc_rows(exam_id: str, doc: Doc, organs: tuple[str, ...]) -> list[tuple[Any, ...]]:
    sentences = _sentences(doc)
    starts = [start for start, _ in sentences]
    found: dict[tuple[int, str], list[Any]] = {}  # (sentence, organ) -> [term, all negated]
    for ent in sorted(doc.ents, key=lambda e: e.start_char):
        if ent.label_ not in organs:
            continue
        index = bisect.bisect_right(starts, ent.start_char) - 1
        if index < 0:
            continue
        negated = bool(ent._.negation)
        key = (index, ent.label_)
        if key in found:
            found[key][1] = found[key][1] and negated
        else:
            found[key] = [ent.text, negated]
    order = sorted(found, key=lambda k: k[0])  # stable: organs in order of first mention
    return [
        (exam_id, index, sentences[index][1], organ, *found[(index, organ)])
        for index, organ in order
    ]


def _empty_mentions() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in MENTION_COLUMNS}))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype(
        {
            "exam_id": "string",
            "sentence_index": "int64",
            "sentence": "string",
            "organ": "string",
            "term": "string",
            "negated": "bool",
        }
    ).reset_index(drop=True)


def tag_reports(reports: pd.DataFrame, organs: Sequence[str] | None = None) -> pd.DataFrame:
    """The mention table of `reports` (columns exam_id, text; a title is ignored): one row per
    (exam_id, sentence_index, organ) whose sentence mentions the organ, with the sentence text,
    the first matched surface form (`term`) and whether every mention there is negated. Rows
    follow the reports' order, then the sentences', then the organs' first mentions. A report
    without text gives no rows."""
    missing = [c for c in ("exam_id", "text") if c not in reports.columns]
    if missing:
        raise DataContractError(f"reports lack column(s) {missing} (need exam_id and text)")
    wanted = _check_organs(organs)
    items = [
        (str(exam_id), text)
        for exam_id, text in zip(reports["exam_id"], reports["text"], strict=True)
        if isinstance(text, str) and text.strip()
    ]
    if not items:
        return _empty_mentions()
    docs = _pipeline().pipe([text for _, text in items])
    rows: list[tuple[Any, ...]] = []
    bar = tqdm(
        zip(items, docs, strict=True),
        total=len(items),
        desc="tagging reports",
        unit="report",
        disable=len(items) < PROGRESS_MIN_REPORTS,
    )
    for (exam_id, _), doc in bar:
        rows.extend(_doc_rows(exam_id, doc, wanted))
    if not rows:
        return _empty_mentions()
    return _typed(pd.DataFrame(rows, columns=list(MENTION_COLUMNS)))


def organ_text(mentions: pd.DataFrame, organ: str) -> pd.Series:
    """exam_id -> the exam's sentences mentioning `organ`, in report order, each once, joined by
    a space (paper 002 §3.4 pairs this text with the exam's images of the organ). Exams without
    such a sentence are absent."""
    _check_organs([organ])
    missing = [c for c in ("exam_id", "sentence_index", "sentence", "organ") if c not in mentions]
    if missing:
        raise DataContractError(f"mention table lacks column(s) {missing}")
    sub = mentions.loc[mentions["organ"] == organ, ["exam_id", "sentence_index", "sentence"]]
    sub = sub.assign(_exam_order=pd.factorize(sub["exam_id"])[0])
    sub = sub.sort_values(["_exam_order", "sentence_index"], kind="stable")
    sub = sub.drop_duplicates(["exam_id", "sentence"])
    text = sub.groupby("exam_id", sort=False)["sentence"].agg(" ".join)
    text.index = text.index.astype("string")
    text.index.name = "exam_id"
    return text.astype("string").rename(organ)
