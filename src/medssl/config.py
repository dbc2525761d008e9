"""Typed configuration: every params.yaml section is a pydantic model; `-S section.key=value`
overrides use the syntax of `dvc exp run -S`.

Unknown keys and wrong types are `ConfigError`s with one line naming the key.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from medssl.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
YAML11_WORDS = frozenset({"on", "off", "yes", "no", "y", "n"})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# `data.size` values of each `data.kind` (the SIZES of medssl.data.synth.archive, .cardiac,
# .breast and .chest; tests keep them in agreement)
SYNTH_SIZES: dict[str, tuple[str, ...]] = {
    "abdominal-us": ("tiny", "small", "paper"),
    "cardiac-mr": ("tiny", "small", "small-3", "paper", "paper-3"),
    "breast-us": ("tiny", "small", "paper"),
    "chest-xray": ("tiny", "small", "paper"),
}


class DataConfig(Section):
    """`medssl data synth`: the generated archive."""

    kind: Literal["abdominal-us", "cardiac-mr", "breast-us", "chest-xray"] = Field(
        "abdominal-us",
        description="abdominal-us (paper 000) | cardiac-mr (paper 001) | breast-us (paper 004) "
        "| chest-xray (paper 003, detection)",
    )
    size: str = Field("small", description="a size of the kind (SYNTH_SIZES)")
    seed: int = 0
    workers: int = Field(0, ge=0, description="processes for image writing; 0 = all cores")
    metadata_error: float = Field(
        0.15, ge=0, le=1, description="cardiac-mr: share of series with a wrong header"
    )

    @model_validator(mode="after")
    def _check_size(self) -> DataConfig:
        sizes = SYNTH_SIZES[self.kind]
        if self.size not in sizes:
            # a custom error: no "Value error, " prefix; `field` names the key (see _one_line)
            raise PydanticCustomError(
                "size_of_kind",
                f"{self.size!r} is not one of the {self.kind} sizes: {', '.join(sizes)}",
                {"field": "size"},
            )
        return self


class IngestConfig(Section):
    """`medssl ingest`: DICOM export → de-identified dataset (docs/ingest.md)."""

    name: str = Field("ingested", min_length=1, description="dataset.yaml name")
    task: Literal["multilabel", "binary", "detection", "image-text"] = "multilabel"
    classes: list[str] = Field(
        default_factory=list, description="label columns created empty, for later annotation"
    )

    @model_validator(mode="after")
    def _binary_has_one_class(self) -> IngestConfig:
        if self.task == "binary" and len(self.classes) != 1:
            raise PydanticCustomError(
                "binary_classes",
                "a binary task names exactly one class, the positive one",
                {"field": "classes"},
            )
        return self

    # paper 000 §3.1: B-mode only; exams kept by modality and report title
    modalities: list[str] = Field(default_factory=lambda: ["US"])
    scope_keywords: list[str] = Field(
        default_factory=lambda: [
            "abdomin", "abdomen", "renal", "rein", "kidney", "bladder", "vesic", "vessie",
            "liver", "hepat", "foie", "urinar",
        ],
        description="accent/case-folded substrings of an in-scope title; [] = every title",
    )  # fmt: skip
    title_tags: list[str] = Field(
        default_factory=lambda: ["StudyDescription", "SeriesDescription", "BodyPartExamined"],
        description="DICOM keywords read as the exam title when the report has none",
    )
    keep_untitled: bool = Field(True, description="keep exams without any title (paper 000)")
    exclude_doppler: bool = Field(True, description="drop colour-Doppler frames (flagged anyway)")
    doppler_chroma: int = Field(60, ge=1, le=255, description="max channel difference of colour")
    doppler_fraction: float = Field(0.01, gt=0, lt=1, description="colour share of the centre")
    doppler_margin: float = Field(0.1, ge=0, lt=0.5, description="border ignored (bars, logos)")
    mask_top_band: float = Field(
        0.1, ge=0, description="US: blank the top band (<1: fraction of height, >=1: pixels)"
    )
    frame_step: int = Field(1, ge=1, description="keep every k-th frame of a cine")
    max_frames: int = Field(0, ge=0, description="at most n frames per file (0 = all)")
    keep_16bit: bool = Field(False, description="grey images with >8 bits → 16-bit PNG")
    png_compress_level: int = Field(1, ge=0, le=9)
    date_policy: Literal["shift", "drop"] = "shift"
    date_shift_days: int = Field(365, ge=1, description="per-patient shift in ±[1, N] days")
    salt_env: str = Field("MEDSSL_INGEST_SALT", description="env var holding the secret salt")
    salt_file: str | None = Field(None, description="file holding the salt (env var wins)")
    report_language: str = Field("fr", description="language of reports without one")
    commit_every: int = Field(2000, ge=1, description="files per atomic manifest commit")
    workers: int = Field(0, ge=0, description="processes; 0 = all cores")


class ValidateConfig(Section):
    """`medssl validate`: thresholds of the image-file checks and of the report."""

    min_image_side: int = Field(16, gt=0)
    max_image_side: int = Field(8192, gt=0)
    min_file_bytes: int = Field(64, ge=0)
    workers: int = Field(0, ge=0, description="processes for image checks; 0 = all cores")
    check_images: bool = True
    examples: int = Field(5, ge=1, description="offending rows shown per failed expectation")


class SplitConfig(Section):
    """`medssl split`: patient-disjoint splits and nested label-fraction subsets."""

    seed: int = 0
    # paper 000 §3.1 / Fig. 4: 84,967 / 2,735 / 886 / 1,242 of 89,830 images
    fractions: dict[Literal["unlabeled", "train", "val", "test"], float] = Field(
        default_factory=lambda: {"unlabeled": 0.946, "train": 0.030, "val": 0.010, "test": 0.014}
    )
    # paper 000 §3.3.2: 10/20/50/100 % of the labeled train split, sampled by exam
    label_fractions: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.5, 1.0])
    resplit: bool = Field(False, description="re-split even when the manifest already has splits")

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if any(v < 0 for v in self.fractions.values()):
            raise ValueError("fractions must be >= 0")
        total = sum(self.fractions.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1 (they sum to {total:g})")
        if any(not 0 < f <= 1 for f in self.label_fractions):
            raise ValueError("label_fractions must be in (0, 1]")
        return self


class LoopConfig(Section):
    """The knobs of the one training loop that every stage running it shares (paper 000 §3.2
    defaults); a method's own hyperparameters live in its section (see `method_sections`)."""

    method: str = Field("supervised", description="a name of medssl.methods.METHODS")
    backbone: Literal["resnet18", "resnet50", "vgg16_bn"] = "resnet18"
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="adam (paper 000 §3.2) | sgd with momentum (paper 001 §4)"
    )
    lr: float = Field(1e-4, gt=0)  # paper 000 §3.2: Adam, fixed learning rate 0.0001
    lr_decay_every: int | None = Field(
        None, ge=1, description="epochs between learning-rate decays (paper 004: 50); null: fixed"
    )
    lr_decay: float = Field(0.1, gt=0, le=1, description="factor of each decay (paper 004: 0.1)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    weight_decay: float = Field(0.0, ge=0)
    batch_exams: int = Field(4, ge=1, description="t exams per batch (paper 000 §3.2)")
    max_batch_images: int = Field(64, ge=1, description="cap on images per exam batch")
    max_epochs: int = Field(30, ge=1)
    max_steps: int | None = Field(None, ge=1, description="a step budget instead of epochs")
    patience: int = Field(7, ge=1)  # paper 000 §3.2: early stopping after 7 epochs
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints")
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: bool = Field(True, description="bf16 autocast on GPU")
    channels_last: bool = True
    workers: int = Field(0, ge=0, description="image-cache decoding processes; 0 = all cores")
    cache_dir: str = Field(".cache/medssl", description="decoded-image cache (memory-mapped)")


class TrainConfig(LoopConfig):
    """`medssl train`: a classifier through the one training loop."""

    init: Literal["random", "imagenet", "checkpoint"] = "random"
    weights: str | None = Field(
        None,
        description="imagenet: a .pth file or a torch hub cache dir; checkpoint: a medssl "
        "model.pt or a pretrain encoder.pt",
    )
    label_fraction: float = Field(1.0, gt=0, le=1, description="train subset (split stage)")
    cv_folds: int = Field(
        0,
        ge=0,
        description="k-fold cross-validation by patient over the labeled rows (paper 004 §3.1: "
        "5); 0: the dataset's own train/val/test splits",
    )
    cv_fold: int = Field(0, ge=0, description="the held-out fold (test) when cv_folds > 0")

    @model_validator(mode="after")
    def _check_cv(self) -> TrainConfig:
        if self.cv_folds == 1:
            raise PydanticCustomError(
                "cv_folds", "cv_folds must be 0 (off) or at least 2", {"field": "cv_folds"}
            )
        if self.cv_folds and self.cv_fold >= self.cv_folds:
            raise PydanticCustomError(
                "cv_fold",
                f"cv_fold {self.cv_fold} is not one of 0 … {self.cv_folds - 1}",
                {"field": "cv_fold"},
            )
        if self.cv_folds and self.label_fraction < 1:
            raise PydanticCustomError(
                "cv_fraction",
                "cross-validation trains on every labeled row: label_fraction must be 1",
                {"field": "label_fraction"},
            )
        return self


class PretrainConfig(LoopConfig):
    """`medssl pretrain`: an encoder method on the unlabeled rows (paper 000 §3.2: batches of 16
    exams, 100 epochs, the last epoch's weights: no early stopping in unsupervised training)."""

    method: str = Field("lsd", description="an encoder method of medssl.methods.METHODS")
    batch_exams: int = Field(16, ge=1, description="t unlabeled exams per batch (§3.2)")
    max_batch_images: int = Field(256, ge=1, description="cap on images per exam batch")
    max_epochs: int = Field(100, ge=1)
    rows: Literal["unlabeled", "unlabeled+train", "train-rest"] = Field(
        "unlabeled",
        description="rows trained on (labels are never read); train-rest: the train rows "
        "outside the pretrain.label_fraction subset (paper 003 §III.A: the pre-training share)",
    )
    label_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="with rows=train-rest: the fine-tuning subset (split stage's label_fraction "
        "<= f) whose complement in train is pre-trained on",
    )
    tsne_points: int = Field(2000, ge=0, description="points in the t-SNE plot; 0: no plot")


class PairsConfig(Section):
    """`medssl data pairs` / `medssl data organ-task` (paper 002 §3): image-text pairs of one
    organ from deep clusters and report sentences, and the organ's labeled binary task."""

    organ: str = Field("kidney", description="organ class of the archive (a label_<organ> column)")
    threshold: float | Literal["auto"] = Field(
        0.5,
        description="a cluster is the organ's when its Algorithm-1 soft label exceeds this; "
        "auto: the organ's share of the dev images (clusters enriched in the organ)",
    )
    rows: Literal["unlabeled", "unlabeled+train"] = Field(
        "unlabeled", description="rows paired (paper 002 §3.1: the unlabeled pre-training set)"
    )
    vocab_size: int = Field(2000, ge=100, description="WordPiece vocabulary (paper 002 §4.1)")
    min_frequency: int = Field(2, ge=1, description="a word piece's minimum count")
    target: str = Field(
        "kidney_abnormal", description="organ-task: the manifest attribute that is the target"
    )
    positive: str = Field("abnormal", description="organ-task: the positive class's name")

    @model_validator(mode="after")
    def _check_threshold(self) -> PairsConfig:
        if self.threshold != "auto" and not 0 < self.threshold < 1:
            raise ValueError("threshold must be in (0, 1) or auto")
        return self


class EvaluateConfig(Section):
    """`medssl evaluate`: per-class thresholds on val, metrics on test (paper 000 §3.2)."""

    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of exams for the CI")
    ci: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


class PredictConfig(Section):
    """`medssl predict`: batch inference with a model folder or a registered version."""

    batch_size: int = Field(256, ge=1, description="images per forward pass")
    chunk: int = Field(4096, ge=1, description="images per resumable part")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")


class RegisterConfig(Section):
    """`medssl register`: MLflow model registry and the promotion gate."""

    model_name: str | None = Field(None, description="registered model; default: abdominal-organs")
    experiment: str = "medssl"
    metric: str = Field("test_f1_weighted", description="metrics.json number the gate compares")
    margin: float = Field(0.0, ge=0, description="challenger must beat champion by this much")
    rescore_champion: bool = Field(
        True,
        description="score the champion on the challenger's test split before comparing "
        "(false: compare recorded numbers, refused when the test data differs)",
    )


class TuneSettings(Section):
    """What a sweep searches and how it runs (`tune:` in params.yaml, and each of its presets).
    `space` keys are params.yaml keys (`lsd.lambda`; `pica.lambda,lsd.lambda` sets both to one
    value); a value is a grid `[a, b, …]`, `uniform(lo, hi)`, `loguniform(lo, hi)`,
    `randint(lo, hi)`, `choice([a, b])`, or a scalar fixed for every trial."""

    chain: Literal["pretrain", "train", "pretrain-train"] = Field(
        "pretrain",
        description="a trial: pretrain (→ Algorithm-1 table) | train → evaluate | "
        "pretrain → train from its encoder → evaluate",
    )
    space: dict[str, Any] = Field(default_factory=dict, description="the search space")
    seeds: int = Field(1, ge=1, description="every configuration with seeds 0 … n-1")
    num_samples: int = Field(1, ge=1, description="samples of the random part (grid repeated)")
    metric: str = Field("val_nmi", description="a trial's final number to rank by")
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "fifo"] = Field("asha", description="asha: stop bad trials early")
    scheduler_metric: str | None = Field(
        None, description="the per-epoch number ASHA compares; null: metric or the chain's own"
    )
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: int = Field(2, ge=2, description="ASHA: 1/n of the trials go on per rung")
    resources: dict[Literal["cpu", "gpu"], float] = Field(
        default_factory=lambda: {"cpu": 1.0, "gpu": 0.0}, description="per trial"
    )
    max_concurrent: int = Field(0, ge=0, description="trials at once; 0: as resources allow")
    max_failures: int = Field(
        1, ge=0, description="restarts of a crashed trial (from its checkpoint)"
    )
    checkpoints: bool = Field(True, description="report training checkpoints to Ray Tune")
    plot: dict[Literal["x", "hue"], str] = Field(
        default_factory=dict, description="box plot: the swept key on x, one box per hue key"
    )


class TuneConfig(TuneSettings):
    """`medssl tune`: Ray Tune sweeps over any params.yaml keys (docs/tuning.md). The section's
    own keys are the defaults; a preset (`--preset NAME`) replaces the keys it names."""

    address: str | None = Field(
        None, description="a Ray cluster's dashboard (http://head:8265): submit as a Ray Job"
    )
    storage: str | None = Field(
        None, description="trial storage: a folder or s3://bucket/prefix; null: OUT/ray"
    )
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_presets(self) -> TuneConfig:
        for name, preset in self.presets.items():
            try:
                TuneSettings.model_validate(preset)
            except ValidationError as exc:
                err = exc.errors()[0]
                key = ".".join(str(p) for p in err["loc"])
                raise PydanticCustomError(
                    "preset", f"preset {name!r}: {key}: {err['msg']}", {"field": "presets"}
                ) from None
        return self

    def with_updates(self, updates: dict[str, Any]) -> TuneConfig:
        """This section with `updates` (command-line flags), validated: one line for a bad one."""
        try:
            return TuneConfig.model_validate({**self.model_dump(), **updates})
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, _known_keys(TuneConfig), prefix="tune.")) from None

    def with_preset(self, name: str | None) -> TuneConfig:
        """This section with preset `name`'s keys in place of its own (None: as it is)."""
        if name is None:
            return self
        if name not in self.presets:
            known = ", ".join(sorted(self.presets)) or "none"
            raise ConfigError(f"no tune preset {name!r} in params.yaml (presets: {known})")
        return self.with_updates(self.presets[name])


class Params(Section):
    """The whole params.yaml."""

    data: DataConfig = Field(default_factory=DataConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    split: SplitConfig = Field(default_factory=SplitConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    register_: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")
    predict: PredictConfig = Field(default_factory=PredictConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # every method's section (its defaults unless load_params read one)
    _methods: dict[str, BaseModel] = PrivateAttr(
        default_factory=lambda: {name: model() for name, model in method_sections().items()}
    )

    def method_params(self, method: str) -> BaseModel | None:
        """The typed hyperparameters of `method` (its params.yaml section), None when it
        declares none."""
        return self._methods.get(method)

    def dump(self) -> dict[str, Any]:
        """The resolved config as plain data (for logs, MLflow and `medssl config show`),
        with every method's section."""
        out = self.model_dump(mode="json", by_alias=True)
        for name in method_sections():
            section = self.method_params(name)
            assert section is not None
            out[name] = section.model_dump(mode="json", by_alias=True)
        return out


def method_sections() -> dict[str, type[BaseModel]]:
    """{method name: its hyperparameter model}: each is a params.yaml section under the method's
    name (DESIGN.md, "one contract"); see medssl.method_params."""
    from medssl.method_params import SECTIONS  # late: it imports this module

    return dict(SECTIONS)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` → (["section", "key"], value); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected section.key=value")
    path = key.strip().split(".")
    if any(not p for p in path):
        raise ConfigError(f"override {text!r}: empty key part")
    if raw.strip().lower() in YAML11_WORDS:
        return path, raw.strip()  # YAML 1.2 (as DVC reads it): on/off/yes/no are strings
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        name = field.alias or name
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _apply(raw: dict[str, Any], path: list[str], value: Any, original: str) -> None:
    node: Any = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {original!r}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_params(
    path: Path | str | None = None, overrides: Iterable[str] = (), *, required: bool = False
) -> Params:
    """Read params.yaml (or the built-in defaults when it does not exist and is not required),
    apply `section.key=value` overrides and validate the result."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    raw: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
    elif required:
        raise ConfigError(f"{path}: params file not found")
    return build_params(raw, overrides)


def build_params(raw: dict[str, Any], overrides: Iterable[str] = ()) -> Params:
    """Params from a params.yaml mapping (`raw`, any subset of sections) and `section.key=value`
    overrides, validated (one-line ConfigError)."""
    # Start from the defaults so an override can reach into a default mapping
    # (e.g. -S split.fractions.train=0.5); a file's value replaces the default key by key.
    resolved = Params().dump()
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(resolved.get(section), dict):
            resolved[section].update(values)
        else:
            resolved[section] = values
    for text in overrides:
        keys, value = parse_override(text)
        _apply(resolved, keys, value, text)
    sections = method_sections()
    raw_sections = {name: resolved.pop(name) for name in sections if name in resolved}
    try:
        params = Params.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, [*_known_keys(Params), *sections])) from None
    for name, model in sections.items():
        raw_section = raw_sections.get(name)
        if raw_section is not None and not isinstance(raw_section, dict):
            raise ConfigError(f"parameter {name!r}: expected a mapping of {name} settings")
        try:
            params._methods[name] = model.model_validate(raw_section or {})
        except ValidationError as exc:
            known = [f"{name}.{k}" for k in _known_keys(model)]
            raise ConfigError(_one_line(exc, known, prefix=f"{name}.")) from None
    return params


def _one_line(exc: ValidationError, known: list[str], prefix: str = "") -> str:
    """The first validation error as one line naming the key (`known`: the valid keys)."""
    err = exc.errors()[0]
    # a model validator's error names its field in ctx["field"] (its loc is the model's)
    field = (err.get("ctx") or {}).get("field")
    key = prefix + ".".join(str(p) for p in (*err["loc"], *([field] if field else [])))
    if err["type"] == "extra_forbidden":
        section = key.split(".")[0]
        shown = [k for k in known if k.startswith(f"{section}.")] or [
            k.split(".")[0] for k in known
        ]
        return f"unknown parameter {key!r} (known: {', '.join(dict.fromkeys(shown))})"
    got = err.get("input")
    shown_input = "" if isinstance(got, dict) else f", got {got!r}"
    return f"parameter {key or '(params)'!r}: {err['msg']}{shown_input}"
