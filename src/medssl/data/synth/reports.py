"""French exam reports for the synthetic archive, consistent with the exam's images.

Paper 000 §3.1: 60 % of reports carry a title (abdominal, renal, bladder, liver or urinary-tract
ultrasound); paper 002 §2 pairs report sentences that mention an organ with that organ's images, so
each examined organ gets its own sentence, but not every organ is mentioned.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

TITLES: dict[str, str] = {
    "abdominal": "ÉCHOGRAPHIE ABDOMINALE",
    "renal": "ÉCHOGRAPHIE RÉNALE",
    "bladder": "ÉCHOGRAPHIE VÉSICALE",
    "liver": "ÉCHOGRAPHIE HÉPATIQUE",
    "urinary": "ÉCHOGRAPHIE DE L'APPAREIL URINAIRE",
}
TITLE_RATE = 0.6  # paper 000 §3.1: "For 60% of the reports, a title was available"
MENTION_RATE = 0.8  # an examined organ is described with this probability

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
    ),
    "gallbladder": (
        "Vésicule biliaire alithiasique, à paroi fine.",
        "Pas de lithiase vésiculaire, paroi vésiculaire fine.",
        "Vésicule biliaire de morphologie normale.",
    ),
    "kidney": (
        "Reins de taille normale, bien différenciés, sans dilatation des cavités.",
        "Les deux reins sont de morphologie normale, sans dilatation pyélocalicielle.",
        "Reins de taille et d'échostructure normales.",
    ),
    "pancreas": (
        "Pancréas d'aspect normal, partiellement visualisé.",
        "Le pancréas est homogène, sans dilatation du canal de Wirsung.",
    ),
    "spleen": (
        "Rate homogène, de taille normale ({n} cm).",
        "Pas de splénomégalie (rate de {n} cm).",
    ),
    "bladder": (
        "Vessie en réplétion, à paroi fine, sans anomalie endoluminale.",
        "Vessie de contenu anéchogène, à paroi régulière.",
    ),
}
KIDNEY_ABNORMAL = (
    "Kyste cortical simple du rein {side} mesurant {n} mm.",
    "Dilatation pyélocalicielle {side_f} modérée.",
    "Présence de plusieurs kystes corticaux du rein {side}, le plus volumineux de {n} mm.",
)
CONCLUSION_NORMAL = (
    "Conclusion : examen échographique sans particularité.",
    "Conclusion : pas d'anomalie décelée.",
)
CONCLUSION_KIDNEY = (
    "Conclusion : anomalie rénale {side_f}, à confronter au bilan biologique.",
    "Conclusion : anomalie du rein {side}, contrôle échographique conseillé.",
)
ORGAN_ORDER = ("liver", "gallbladder", "pancreas", "spleen", "kidney", "bladder")


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


def write_report(
    rng: np.random.Generator, organs: Collection[str], kidney_abnormal: bool
) -> tuple[str | None, str]:
    """(title or None, text) for an exam whose frames show `organs`."""
    title = TITLES[_title_key(organs)] if rng.random() < TITLE_RATE else None
    side, side_f = ("droit", "droite") if rng.random() < 0.5 else ("gauche", "gauche")
    fill = {"side": side, "side_f": side_f}
    sentences = [f"Indication : {_pick(rng, INDICATIONS)}."]
    for organ in ORGAN_ORDER:
        if organ not in organs:
            continue
        if organ == "kidney" and kidney_abnormal:  # an abnormal finding is always reported
            template = _pick(rng, KIDNEY_ABNORMAL)
        elif rng.random() < MENTION_RATE:
            template = _pick(rng, NORMAL[organ])
        else:
            continue
        n = int(rng.integers(9, 13) if organ == "spleen" else rng.integers(8, 45))
        sentences.append(template.format(n=n, **fill))
    conclusion = _pick(rng, CONCLUSION_KIDNEY if kidney_abnormal else CONCLUSION_NORMAL)
    sentences.append(conclusion.format(**fill))
    return title, " ".join(sentences)
