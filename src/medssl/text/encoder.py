"""The text encoder of paper 002 §4.1 (ConVIRT's text branch): a transformer over the word
pieces of the retrained tokenizer, pooled into one vector per text.

Paper 002 fine-tunes CamemBERT; here a small BERT is built from a config (random init), or a
local folder of pretrained weights (e.g. a CamemBERT download) is loaded and its token
embeddings resized to the retrained vocabulary. Nothing is ever downloaded: `transformers` is
imported inside the functions and every load is `local_files_only`.

Pooling: "max" (default) takes the element-wise max of the last layer's vectors over the real
tokens: ConVIRT (Zhang et al. 2020), which paper 002 follows, describes its text encoder as a BERT
followed by max-pooling over all output vectors (from the paper's text, not checked against its
code); "mean" averages them; "cls" takes [CLS]'s vector.
Padding never changes the output: padded tokens are masked out of attention and pooling, and
position ids count real tokens only.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medssl.errors import ConfigError

POOLINGS = ("max", "mean", "cls")
# models whose position ids start after the padding index (RoBERTa's scheme)
_ROBERTA_LIKE = ("roberta", "camembert", "xlm-roberta", "xlm-roberta-xl", "data2vec-text")


class TextEncoder(nn.Module):
    """forward(ids [N, L] long, mask [N, L] (1 = real token)) -> [N, output_dim]."""

    def __init__(self, backbone: nn.Module, *, pooling: str = "max", max_length: int = 64):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"text pooling {pooling!r} is not one of {list(POOLINGS)}")
        config: Any = backbone.config  # type: ignore[attr-defined]
        self.backbone = backbone
        self.pooling = pooling
        self.max_length = max_length
        self.output_dim = int(config.hidden_size)
        pad = config.pad_token_id if config.pad_token_id is not None else 1
        self._position_offset = pad + 1 if config.model_type in _ROBERTA_LIKE else 0
        self._takes_positions = "position_ids" in inspect.signature(backbone.forward).parameters

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        mask = mask.to(device=ids.device, dtype=torch.long)
        extra: dict[str, torch.Tensor] = {}
        if self._takes_positions:
            extra["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0) + self._position_offset
        hidden = self.backbone(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        real = mask.unsqueeze(-1).bool()
        if self.pooling == "max":
            return hidden.masked_fill(~real, torch.finfo(hidden.dtype).min).amax(dim=1)
        return (hidden * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"text encoder {name}={value!r} must be a positive integer")


def _load_pretrained(weights: Path) -> nn.Module:
    if not weights.is_dir():
        raise ConfigError(f"{weights}: text encoder weights folder not found")
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(weights), local_files_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{weights}: not a loadable text encoder ({reason})") from None


def build_text_encoder(
    vocab_size: int,
    *,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 256,
    max_length: int = 64,
    weights: str | Path | None = None,
    pooling: str = "max",
) -> TextEncoder:
    """A `TextEncoder` for ids of a tokenizer with `vocab_size` tokens ([PAD] = 0).

    Without `weights`: a BERT of the given size, randomly initialised. With `weights` (a local
    folder as `save_pretrained` writes it, e.g. CamemBERT): that model, its token embeddings
    resized to `vocab_size` since the tokenizer is retrained; the size arguments are then the
    checkpoint's own."""
    _positive(vocab_size=vocab_size, max_length=max_length)
    if weights is None:
        _positive(hidden=hidden, layers=layers, heads=heads, intermediate=intermediate)
        if hidden % heads:
            raise ConfigError(f"text encoder hidden={hidden} is not a multiple of heads={heads}")
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_length,
            pad_token_id=0,
        )
        backbone = BertModel(config, add_pooling_layer=False)
    else:
        backbone = _load_pretrained(Path(weights))
        backbone.resize_token_embeddings(vocab_size)  # type: ignore[operator]
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # unused: pooling is ours (and DDP wants no idle weights)
    encoder = TextEncoder(backbone, pooling=pooling, max_length=max_length)
    positions = int(backbone.config.max_position_embeddings) - encoder._position_offset  # type: ignore[attr-defined]
    if max_length > positions:
        raise ConfigError(
            f"text max_length={max_length} exceeds the encoder's {positions} positions"
        )
    return encoder
