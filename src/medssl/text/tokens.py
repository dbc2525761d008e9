"""A WordPiece tokenizer retrained on the report corpus (paper 002 §4.1: the word pieces that
rebuild the training reports with the fewest tokens), and the encoding of texts into padded id
arrays, cached on disk.

Lower-cased, accents kept ("échographie" and "echographie" are different words in French
reports), BERT special tokens with [PAD] = 0.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medssl.errors import ConfigError, DataContractError
from medssl.fileio import atomic_open, atomic_write, atomic_write_text, output_errors

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_DIR = "tokenizer"  # a dataset's tokenizer folder (`medssl data pairs` writes it)
VOCAB_FILE = "vocab.txt"
_CACHE_VERSION = b"medssl-token-cache-v1"


def _wordpiece(vocab: str | dict[str, int] | None = None):
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(vocab, lowercase=True, strip_accents=False, clean_text=True)


def _check_texts(texts: Sequence[str]) -> None:
    for text in texts:
        if not isinstance(text, str):
            raise DataContractError(f"texts to tokenize must be strings, got {type(text).__name__}")


def _continuing_pieces(wordpiece, texts: Sequence[str]) -> list[str]:
    """'##c' for every character c that follows another inside a word of `texts`, sorted.

    The trainer (BPE under the hood) numbers these pieces in hash-map order, which changes from
    run to run, and breaks ties between equally frequent merges by those numbers: the same
    corpus then gives another vocabulary (huggingface/tokenizers#1794, open in 0.23). Declared
    up front (as special tokens, the only way in), they are numbered in this sorted order."""
    normalizer, pre_tokenizer = wordpiece._tokenizer.normalizer, wordpiece._tokenizer.pre_tokenizer
    chars: set[str] = set()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            chars.update(word[1:])
    return [f"##{c}" for c in sorted(chars)]


def train_tokenizer(
    texts: Iterable[str], out_dir: Path, vocab_size: int = 2000, min_frequency: int = 2
) -> Path:
    """Train a WordPiece tokenizer on `texts`; write `out_dir/vocab.txt` and
    `out_dir/tokenizer.json` (each atomically; other files in `out_dir` are left alone) and
    return `out_dir`. The same corpus gives the same vocabulary."""
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ConfigError(f"tokenizer vocab_size={vocab_size} is too small")
    if min_frequency < 1:
        raise ConfigError(f"tokenizer min_frequency={min_frequency} must be >= 1")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise DataContractError("no report text to train the tokenizer on")
    trained = _wordpiece()
    trained.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *_continuing_pieces(trained, texts)],
        show_progress=False,
    )
    vocab = trained.get_vocab()
    wordpiece = _wordpiece(vocab)  # the same vocabulary, only the 5 BERT tokens special
    by_id = sorted(vocab, key=vocab.__getitem__)
    out_dir = Path(out_dir)
    with output_errors(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / VOCAB_FILE, "".join(f"{token}\n" for token in by_id))
        # tokenizer.json last: it is the file readers (and the cache key) go by
        atomic_write(out_dir / TOKENIZER_FILE, lambda tmp: wordpiece.save(str(tmp)))
    return out_dir


def tokenizer_file(path: Path) -> Path:
    """The file that defines the tokenizer in `path` (a folder, or the file itself)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in (TOKENIZER_FILE, VOCAB_FILE):
        if (path / name).is_file():
            return path / name
    raise ConfigError(f"{path}: no tokenizer there (need {TOKENIZER_FILE} or {VOCAB_FILE})")


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer saved by `train_tokenizer` in the folder `path` (tokenizer.json, else
    vocab.txt with the same settings); one-line ConfigError when there is none or it is
    unreadable."""
    file = tokenizer_file(path)
    try:
        if file.name.endswith(".json"):
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(file))
        return _wordpiece(str(file))._tokenizer
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{file}: not a readable tokenizer ({reason})") from None


def _special_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ConfigError(f"the tokenizer has no {token} token")
    return token_id


def encode(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """ids [N, max_length] int32 ([CLS] word pieces [SEP], truncated to fit, padded with
    [PAD]) and the attention mask [N, max_length] uint8 (1 on real tokens)."""
    if max_length < 2:
        raise ConfigError(f"max_length={max_length} must be >= 2 ([CLS] and [SEP])")
    _check_texts(texts)
    cls, sep, pad = (_special_id(tokenizer, t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    ids = np.full((len(texts), max_length), pad, dtype=np.int32)
    mask = np.zeros((len(texts), max_length), dtype=np.uint8)
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False) if texts else []
    for row, encoding in enumerate(encodings):
        pieces = [cls, *encoding.ids[: max_length - 2], sep]
        ids[row, : len(pieces)] = pieces
        mask[row, : len(pieces)] = 1
    return ids, mask


def cache_key(tokenizer_dir: Path, texts: Sequence[str], max_length: int) -> str:
    """sha256 of the tokenizer file's bytes, max_length and the texts."""
    digest = hashlib.sha256(_CACHE_VERSION)
    digest.update(tokenizer_file(tokenizer_dir).read_bytes())
    digest.update(f"\0{max_length}\0{len(texts)}\0".encode())
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cached_encode(
    tokenizer_dir: Path, texts: Sequence[str], max_length: int, cache_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """`encode` with the tokenizer in `tokenizer_dir`, stored in
    `cache_dir/tokens-<sha256>.npz` and reused while the tokenizer, max_length and texts are
    the same (a corrupt cache file is rebuilt)."""
    texts = list(texts)
    _check_texts(texts)
    path = Path(cache_dir) / f"tokens-{cache_key(tokenizer_dir, texts, max_length)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                ids, mask = cached["ids"], cached["mask"]
            if ids.shape == mask.shape == (len(texts), max_length):
                return ids, mask
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable: encode again and replace it
    ids, mask = encode(load_tokenizer(tokenizer_dir), texts, max_length)
    with output_errors(cache_dir), atomic_open(path, "wb") as fh:
        np.savez(fh, ids=ids, mask=mask)
    return ids, mask
