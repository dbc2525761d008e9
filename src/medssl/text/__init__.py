"""The text side of paper 002 (image-text pre-training on ultrasound reports): organ sentences
of French reports (`concepts`), a WordPiece tokenizer retrained on them (`tokens`) and the text
encoder (`encoder`).

Names are loaded on first use: `import medssl.text` imports neither edsnlp, torch nor
transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medssl.text.concepts import (
        NOT_ORGAN_TERMS,
        ORGAN_TERMS,
        organ_text,
        split_sentences,
        tag_reports,
    )
    from medssl.text.encoder import TextEncoder, build_text_encoder
    from medssl.text.tokens import cached_encode, encode, load_tokenizer, train_tokenizer

_EXPORTS = {
    "ORGAN_TERMS": "concepts",
    "NOT_ORGAN_TERMS": "concepts",
    "split_sentences": "concepts",
    "tag_reports": "concepts",
    "organ_text": "concepts",
    "train_tokenizer": "tokens",
    "load_tokenizer": "tokens",
    "encode": "tokens",
    "cached_encode": "tokens",
    "TextEncoder": "encoder",
    "build_text_encoder": "encoder",
}
__all__ = [
    "NOT_ORGAN_TERMS",
    "ORGAN_TERMS",
    "TextEncoder",
    "build_text_encoder",
    "cached_encode",
    "encode",
    "load_tokenizer",
    "organ_text",
    "split_sentences",
    "tag_reports",
    "train_tokenizer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
