"""French exam reports for the synthetic archive, mostly consistent with the exam's images.

Paper 000 §3.1: 60 % of reports carry a title (abdominal, renal, bladder, liver or urinary-tract
ultrasound). Paper 002 §3.3-3.4 tags the report sentences that mention the kidneys (UMLS concepts:
"rein", "rénal", "pyélocalicielle"…) and pairs them with the exam's kidney images; 5,891 of its
6,960 exams mention the kidneys (≈ 85 %), and it fine-tunes with a noise-robust loss because report
and image do not always agree. So each examined organ may get a sentence (not always), the kidneys
are described with varied vocabulary (singular/plural, adjectives, components, RD/RG abbreviations,
negated findings), an abnormal kidney is usually described with its finding, and a few reports
contradict the images (a missed finding, a finding the images do not show).

What a report cannot know: the renderer draws, per frame and from the frame's own generator,
whether an abnormal kidney shows a cyst or a dilated pelvis, and frames carry no laterality; so the
report's finding (cyst or dilatation) and side are drawn here, independently of the pixels.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import numpy as np

TITLES: dict[str, str] = {
    "abdominal": "ÉCHOGRAPHIE ABDOMINALE",
    "renal": "ÉCHOGRAPHIE RÉNALE",
    "bladder": "ÉCHOGRAPHIE VÉSICALE",
    "liver": "ÉCHOGRAPHIE HÉPATIQUE",
    "urinary": "ÉCHOGRAPHIE DE L'APPAREIL URINAIRE",
}
TITLE_RATE = 0.6  # paper 000 §3.1: "For 60% of the reports, a title was available"
MENTION_RATE = 0.8  # an examined organ (also a normal kidney) is described with this probability
# Kidney statements, per exam with kidney frames (one uniform draw decides which applies). The
# shares of exams whose report mentions the kidneys come out at 0.7 × 0.8 + 0.3 × 0.95 ≈ 0.85
# with the archive's 30 % abnormal exams: paper 002 §3.3, 5,891 / 6,960 = 0.846.
KIDNEY_ABNORMAL_MENTION_RATE = 0.95  # an abnormal kidney is usually reported (described at all)
# Contradictions (noisy pairs, why paper 002 §4.3 fine-tunes with a noise-robust loss):
MISSED_FINDING_RATE = 0.05  # share of abnormal exams whose report describes normal kidneys
FALSE_FINDING_RATE = 0.02  # share of normal exams whose report describes a kidney finding
PAIR_RATE = 0.15  # a normal kidney shares its sentence with the liver (right) or spleen (left)
CYST_RATE = 0.5  # a reported finding is a cyst, else a dilated pelvis (the renderer's odds too)

INDICATIONS = (
    "douleurs abdominales",
    "bilan hépatique perturbé",
    "infection urinaire récidivante",
    "colique néphrétique",
    "suivi d'une insuffisance rénale",
    "troubles mictionnels",
    "altération de l'état général",
)
NORMAL: dict[str, tuple[str, ...]] = {
    "liver": (
        "Foie de taille normale, d'échostructure homogène, sans lésion focale décelable.",
        "Le foie est de contours réguliers et d'échogénicité normale.",
        "Foie non augmenté de volume, homogène.",
        "Foie homogène, voies biliaires intra-hépatiques non dilatées.",
    ),
    "gallbladder": (
        "Vésicule biliaire alithiasique, à paroi fine.",
        "Pas de lithiase vésiculaire, paroi vésiculaire fine.",
        "Vésicule biliaire de morphologie normale.",
        "Vésicule biliaire alithiasique, sans épaississement pariétal.",
    ),
    "pancreas": (
        "Pancréas d'aspect normal, partiellement visualisé.",
        "Le pancréas est homogène, sans dilatation du canal de Wirsung.",
        "Pancréas mal visualisé en raison des gaz digestifs.",
    ),
    "spleen": (
        "Rate homogène, de taille normale ({n} cm).",
        "Pas de splénomégalie (rate de {n} cm).",
        "Rate de taille normale ({n} cm), homogène.",
    ),
    "bladder": (
        "Vessie en réplétion, à paroi fine, sans anomalie endoluminale.",
        "Vessie de contenu anéchogène, à paroi régulière.",
        "Vessie en semi-réplétion, sans anomalie pariétale.",
    ),
}
# --- kidneys: {side} droit/gauche, {side_f} droite/gauche, {abbr} RD/RG, {c} length in cm
KIDNEYS_NORMAL = (  # both kidneys in one sentence
    "Reins de taille normale, bien différenciés, sans dilatation des cavités.",
    "Les deux reins sont de morphologie normale, sans dilatation pyélocalicielle.",
    "Reins de taille et d'échostructure normales.",
    "Reins sans particularité.",
    "Les deux reins sont de taille normale (RD : {c} cm, RG : {c2} cm), bien différenciés.",
    "Reins symétriques, de contours réguliers, à cortex rénal d'épaisseur normale.",
)
KIDNEY_SIDE_NORMAL = (  # one kidney
    "{abbr} : {c} cm, bien différencié.",
    "{abbr} : {c} cm, sans dilatation.",
    "Rein {side} de {c} cm, de contours réguliers, bien différencié.",
    "Rein {side} de taille normale ({c} cm), sans dilatation des cavités.",
    "Rein {side} sans particularité.",
)
KIDNEY_NEGATED = (  # extra sentences of a normal description: components, negated findings
    "Pas de dilatation des cavités pyélocalicielles.",
    "Absence de dilatation pyélocalicielle.",
    "Absence de lithiase rénale.",
    "Parenchyme rénal d'épaisseur normale.",
    "Loges rénales libres.",
    "Bonne différenciation cortico-médullaire, cortex rénal d'épaisseur normale.",
    "Pas de lithiase ni de dilatation des cavités rénales.",
    "Pas de masse rénale décelable.",
)
KIDNEY_PAIRED = {  # a normal kidney described with its neighbour organ (which is then not repeated)
    "liver": (
        "Foie et rein droit d'aspect normal.",
        "Foie et rein droit d'échostructure normale.",
    ),
    "spleen": (
        "Rate ({n} cm) et rein gauche de taille normale.",
        "Rate et rein gauche sans particularité.",
    ),
}
KIDNEY_CYST = (
    "Kyste cortical simple du rein {side} de {n} mm.",
    "Kyste cortical simple du rein {side} mesurant {n} mm.",
    "Présence de plusieurs kystes corticaux du rein {side}, le plus volumineux de {n} mm.",
    "Kystes rénaux multiples, le plus volumineux de {n} mm au pôle {pole} du rein {side}.",
    "{abbr} : {c} cm, siège d'un kyste cortical simple de {n} mm.",
    "Formation kystique anéchogène à paroi fine du rein {side}, de {n} mm, en faveur d'un kyste "
    "simple.",
)
KIDNEY_DILATATION = (
    "Dilatation pyélocalicielle {side_f} modérée.",
    "Dilatation des cavités pyélocalicielles du rein {side} (bassinet de {p} mm).",
    "Hydronéphrose {side_f} modérée, sans obstacle visible.",
    "{abbr} : {c} cm, dilatation pyélocalicielle modérée (bassinet de {p} mm).",
    "Rein {side} siège d'une hydronéphrose modérée, cavités pyélocalicielles dilatées.",
)
KIDNEY_ABNORMAL_EXTRA = ("Absence de lithiase rénale.",)  # true of every rendered kidney
CONCLUSION_NORMAL = (  # mentions no organ
    "Conclusion : examen échographique sans particularité.",
    "Conclusion : pas d'anomalie décelée.",
    "Conclusion : absence d'anomalie échographique décelable.",
)
CONCLUSION_KIDNEY_NORMAL = ("Conclusion : reins d'aspect normal, pas d'autre anomalie décelée.",)
CONCLUSION_KIDNEY = (
    "Conclusion : anomalie rénale {side_f}, à confronter au bilan biologique.",
    "Conclusion : anomalie du rein {side}, contrôle échographique conseillé.",
)
CONCLUSION_FINDING = {
    "cyst": ("Conclusion : kyste rénal {side} d'allure simple, sans caractère de gravité.",),
    "dilatation": ("Conclusion : dilatation pyélocalicielle {side_f}, avis urologique.",),
}
ORGAN_ORDER = ("liver", "gallbladder", "pancreas", "spleen", "kidney", "bladder")
SIDES = {"droit": ("droite", "RD"), "gauche": ("gauche", "RG")}

KidneyStatement = Literal["absent", "normal", "abnormal"]
Finding = Literal["cyst", "dilatation"]


@dataclass(frozen=True)
class Report:
    """One drawn report and what it says about the kidneys (ground truth for tests)."""

    title: str | None
    sentences: tuple[str, ...]  # indication first, conclusion last
    kidney_abnormal: bool  # the exam's truth it was written for
    kidney: KidneyStatement  # what the report says about the kidneys
    finding: Finding | None  # the finding it names when it says "abnormal"
    kidney_sentences: tuple[str, ...]  # the sentences describing the kidneys (not the indication)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    @property
    def contradicts(self) -> bool:
        """The report describes the kidneys, but not as the images show them."""
        return self.kidney != "absent" and (self.kidney == "abnormal") != self.kidney_abnormal


def _title_key(organs: Collection[str]) -> str:
    if organs and set(organs) <= {"kidney", "bladder"}:
        return (
            "urinary"
            if {"kidney", "bladder"} <= set(organs)
            else ("renal" if "kidney" in organs else "bladder")
        )
    if organs and set(organs) <= {"liver", "gallbladder"}:
        return "liver"
    return "abdominal"


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _cm(rng: np.random.Generator) -> str:
    """A normal adult kidney length in cm, French decimal comma ("11", "10,5")."""
    mm = int(rng.integers(95, 126))
    return f"{mm // 10}" if mm % 10 == 0 else f"{mm // 10},{mm % 10}"


def _side(side: str, rng: np.random.Generator) -> dict[str, str]:
    side_f, abbr = SIDES[side]
    return {"side": side, "side_f": side_f, "abbr": abbr, "c": _cm(rng)}


def _kidney_statement(rng: np.random.Generator, abnormal: bool) -> KidneyStatement:
    u = rng.random()
    if abnormal:
        if u < MISSED_FINDING_RATE:
            return "normal"
        return "abnormal" if u < KIDNEY_ABNORMAL_MENTION_RATE else "absent"
    if u < FALSE_FINDING_RATE:
        return "abnormal"
    return "normal" if u < MENTION_RATE else "absent"


def _normal_kidneys(rng: np.random.Generator, only: str | None) -> list[str]:
    """A normal description: both kidneys (or `only` one side), then 0-2 negated findings."""
    if only is not None:
        out = [_pick(rng, KIDNEY_SIDE_NORMAL).format(**_side(only, rng))]
    elif rng.random() < 0.5:
        out = [_pick(rng, KIDNEYS_NORMAL).format(c=_cm(rng), c2=_cm(rng))]
    else:
        template = _pick(rng, KIDNEY_SIDE_NORMAL)  # one style for both sides
        out = [template.format(**_side(s, rng)) for s in ("droit", "gauche")]
    extra = rng.choice(len(KIDNEY_NEGATED), size=int(rng.integers(0, 3)), replace=False)
    return out + [KIDNEY_NEGATED[i] for i in sorted(extra)]


def _abnormal_kidneys(rng: np.random.Generator, fill: dict[str, str]) -> tuple[Finding, list[str]]:
    """The finding's sentence, maybe the other kidney's, maybe a true negated finding."""
    finding: Finding = "cyst" if rng.random() < CYST_RATE else "dilatation"
    template = _pick(rng, KIDNEY_CYST if finding == "cyst" else KIDNEY_DILATATION)
    n, p = int(rng.integers(8, 45)), int(rng.integers(12, 31))
    pole = "supérieur" if rng.random() < 0.5 else "inférieur"
    out = [template.format(n=n, p=p, pole=pole, **fill)]
    if rng.random() < 0.5:  # the other kidney
        other = "gauche" if fill["side"] == "droit" else "droit"
        out.append(_pick(rng, KIDNEY_SIDE_NORMAL).format(**_side(other, rng)))
    if rng.random() < 0.3:
        out.append(_pick(rng, KIDNEY_ABNORMAL_EXTRA))
    return finding, out


def draw_report(rng: np.random.Generator, organs: Collection[str], kidney_abnormal: bool) -> Report:
    """A report for an exam whose frames show `organs`; `kidney_abnormal`: its kidneys are."""
    if kidney_abnormal and "kidney" not in organs:
        raise ValueError("kidney_abnormal needs kidney frames")
    title = TITLES[_title_key(organs)] if rng.random() < TITLE_RATE else None
    side = "droit" if rng.random() < 0.5 else "gauche"
    fill = _side(side, rng)
    described = [
        o for o in ORGAN_ORDER if o in organs and o != "kidney" and rng.random() < MENTION_RATE
    ]
    kidney: KidneyStatement = (
        _kidney_statement(rng, kidney_abnormal) if "kidney" in organs else "absent"
    )

    finding: Finding | None = None
    paired: str | None = None  # liver or spleen: described together with one normal kidney
    kidney_text: list[str] = []
    if kidney == "normal":
        neighbours = [o for o in ("liver", "spleen") if o in described]
        if neighbours and rng.random() < PAIR_RATE:
            paired = _pick(rng, tuple(neighbours))
        kidney_text = _normal_kidneys(rng, {"liver": "gauche", "spleen": "droit"}.get(paired))
    elif kidney == "abnormal":
        finding, kidney_text = _abnormal_kidneys(rng, fill)

    sentences = [f"Indication : {_pick(rng, INDICATIONS)}."]
    kidney_sentences: list[str] = []
    for organ in ORGAN_ORDER:
        if organ == "kidney":
            sentences += kidney_text
            kidney_sentences += kidney_text
            continue
        if organ not in described:
            continue
        n = int(rng.integers(9, 13))  # spleen length in cm
        if organ == paired:
            sentence = _pick(rng, KIDNEY_PAIRED[organ]).format(n=n)
            kidney_sentences.append(sentence)
        else:
            sentence = _pick(rng, NORMAL[organ]).format(n=n)
        sentences.append(sentence)

    if kidney == "abnormal":
        assert finding is not None
        conclusion = _pick(rng, CONCLUSION_FINDING[finding] + CONCLUSION_KIDNEY).format(**fill)
        kidney_sentences.append(conclusion)
    elif kidney == "normal":
        conclusion = _pick(rng, CONCLUSION_NORMAL + CONCLUSION_KIDNEY_NORMAL)
        if conclusion in CONCLUSION_KIDNEY_NORMAL:
            kidney_sentences.append(conclusion)
    else:
        conclusion = _pick(rng, CONCLUSION_NORMAL)
    sentences.append(conclusion)
    return Report(
        title=title,
        sentences=tuple(sentences),
        kidney_abnormal=kidney_abnormal,
        kidney=kidney,
        finding=finding,
        kidney_sentences=tuple(kidney_sentences),
    )


def write_report(
    rng: np.random.Generator, organs: Collection[str], kidney_abnormal: bool
) -> tuple[str | None, str]:
    """(title or None, text) for an exam whose frames show `organs` (see `draw_report`)."""
    report = draw_report(rng, organs, kidney_abnormal)
    return report.title, report.text
