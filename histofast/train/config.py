"""TrainConfig: every setting of ``histofast train`` in one dataclass, from command-line flags, a YAML or
JSON file with the same keys, or Python; flags are generated from the fields, so the three cannot drift."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..checks import check_count
from ..errors import HistofastError
from ..io.level import RESAMPLE
from ..ops import IMAGENET_MEAN, IMAGENET_STD
from ..renamed import renamed_keyword
from ..specs import TISSUE_RULES, GridSpec

OPTIMIZERS = {"adam": 1e-3, "sgd": 0.01}  # default learning rates: the two-level seed's Adam, the paper's SGD
AMP = ("auto", "bf16", "fp16", "off")


def _opt(help: str, default: Any = None, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Settings of one training run (``histofast.train.fit``). Sizes are pixels of the level read
    (``level``/``mpp``/``magnification``; default level 0)."""

    data: str = _opt("training data: a manifest CSV (path,label[,patient]), a class-folder directory, or a "
                     "folder of TFRecord shards (then --classes and --val-data are needed)", "")
    out: str = _opt("output folder: checkpoints, history.jsonl, steps.jsonl, plots", "histofast-train")
    val_data: str | None = _opt("validation data (same kinds as data); default: a patient-disjoint split of data")
    val_fraction: float = _opt("share of data's patients held out for validation when no --val-data", 0.2)
    split_by: str = _opt("split data by 'patient' or 'slide'", "patient", choices=("patient", "slide"))
    classes: list[str] | None = _opt("class names in index order (default: the sorted labels of data)")
    model: str = _opt("two_level_cnn, simple_cnn, googlenet or inception_v3", "two_level_cnn")
    pretrained: str | None = _opt("a local state-dict file in torchvision's key layout to start from")
    freeze_until: str | None = _opt("freeze the model's top-level layers before this one (e.g. Mixed_7a)")
    aux_logits: bool = _opt("googlenet/inception_v3: train the auxiliary heads too", False)
    tile_size: int = _opt("tile (or patch) side, pixels", 512)
    stride: int | None = _opt("tile stride (patch stride inside images), pixels; default tile_size")
    image_size: int | None = _opt("images of this side cut into patches (two_level_cnn: default 2560); for the "
                                  "other models, tiles are then grouped per image for per-image metrics")
    input_size: int | None = _opt("resize each tile to this side before the network (the paper fed 299 to "
                                  "Inception v3)")
    patch_widths: list[int] = _opt("two_level_cnn: PatchNet channels per stage", [16, 32, 64, 128, 256])
    image_widths: list[int] = _opt("two_level_cnn: ImageLevelNet channels of its two stages", [64, 128])
    level: int | None = _opt("slide level to read")
    mpp: float | None = _opt("read at this resolution, µm per pixel")
    magnification: float | None = _opt("read at this objective magnification")
    max_white: float = _opt("keep tiles whose HSV white fraction is at most this", 0.5)
    skip_background: bool = _opt("score only where a low-resolution level shows tissue (faster on mostly-glass "
                                 "slides, not exact: see GridSpec)", False)
    tissue: str = _opt("which rule keeps a tile: hsv (the white fraction, --max-white) or otsu (CLAM's tissue "
                       "segmentation)", GridSpec.tissue, choices=TISSUE_RULES)
    resample: str = _opt("how --mpp/--magnification between levels are made: triangle (the antialiased filter) or dct "
                         "(JPEG levels decoded at 1/2, 1/4, 1/8 by libjpeg's DCT scaling: faster, close to the block "
                         "mean)", GridSpec.resample, choices=RESAMPLE)
    augment: str = _opt("training augmentation: rot90, flip, shift=PIXELS, angle=DEGREES; '' for none",
                        "rot90,flip,shift=16")
    mean: list[float] = _opt("per-channel mean, pixel/255", list(IMAGENET_MEAN))
    std: list[float] = _opt("per-channel std, pixel/255", list(IMAGENET_STD))
    optimizer: str = _opt("adam (lr 1e-3, betas 0.9/0.999) or sgd (momentum, step decay ×0.1 at --lr-steps)",
                          "adam", choices=tuple(OPTIMIZERS))
    lr: float | None = _opt("learning rate (default 1e-3 for adam, 0.01 for sgd)")
    momentum: float = _opt("sgd momentum", 0.9)
    weight_decay: float = _opt("weight decay", 0.0)
    lr_steps: list[int] | None = _opt("epochs (of a stage) at which sgd's rate drops ×0.1; default a third "
                                      "and two thirds of the stage: 0.01 → 0.001 → 0.0001")
    batch_size: int = _opt("samples (tiles, or images) per batch (of each rank, under torchrun)", 16)
    epochs: int = _opt("epochs (two_level_cnn: of the image stage)", 10)
    patch_epochs: int | None = _opt("two_level_cnn: epochs of the patch stage (the patch net on patches) "
                                    "first; default --epochs")
    finetune_epochs: int = _opt("two_level_cnn: end-to-end epochs last", 0)
    log_interval: int = _opt("log every this many batches", 50)
    seed: int = _opt("seed of weights, order, augmentation and split", 0)
    device: str = _opt("cpu, cuda, cuda:N or auto", "auto")
    amp: str = _opt("autocast dtype: auto (bf16 on a GPU, off on the CPU), bf16, fp16 or off", "auto", choices=AMP)
    channels_last: bool = _opt("channels-last memory format on a GPU", True)
    compile: bool = _opt("torch.compile the model", False)
    sync_bn: bool = _opt("under torchrun on GPUs: BatchNorm statistics over all ranks' batches (SyncBatchNorm), as one "
                         "process with the whole batch would have them", False)
    backend: str = _opt("Pipeline backend: auto, dali or torch", "auto", choices=("auto", "dali", "torch"))
    lanes: int | None = _opt("Pipeline lanes (threads; for TFRecord data DALI's reader threads); default CPU cores, "
                             "at most 4")
    max_batches: int | None = _opt("stop each epoch after this many batches (smoke tests)")
    workers: dataclasses.InitVar[int | None] = None  # 0.x's name of lanes: TrainConfig(workers=…) for one release

    def __post_init__(self, workers: int | None) -> None:
        if workers is not None:
            self.lanes = renamed_keyword({"workers": workers}, "TrainConfig", "workers", "lanes", self.lanes)
        if not self.data:
            raise HistofastError("data: required (a manifest CSV, class-folder directory or TFRecord folder)")
        self.grid  # noqa: B018 (checks the grid settings, as GridSpec does everywhere)
        for name in ("batch_size", "epochs", "log_interval"):
            check_count(getattr(self, name), name)
        for name in ("image_size", "input_size", "max_batches", "lanes"):
            if getattr(self, name) is not None:
                check_count(getattr(self, name), name)
        check_count(self.seed, "seed", 0)
        check_count(self.finetune_epochs, "finetune_epochs", 0)
        if self.patch_epochs is not None:
            check_count(self.patch_epochs, "patch_epochs", 0)
        if not 0 <= self.val_fraction < 1:
            raise HistofastError(f"val_fraction={self.val_fraction}: must lie in [0, 1)")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise HistofastError(f"lr={self.lr}: must be a positive number")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise HistofastError(f"{f.name}={getattr(self, f.name)!r}: expected one of {', '.join(choices)}")
        if self.model == "two_level_cnn":
            ignored = [k for k in ("input_size", "aux_logits") if getattr(self, k)]
            if ignored:
                raise HistofastError(f"{', '.join(ignored)}: not used by two_level_cnn (baseline-model settings)")
        if self.classes is not None and len(set(self.classes)) < 2:
            raise HistofastError(f"classes={self.classes}: need at least two distinct class names")

    @property
    def grid(self) -> GridSpec:
        """The grid of the training samples (patches, for images): this config's grid settings as a ``GridSpec``."""
        return GridSpec(self.tile_size, self.stride, self.level, self.mpp, self.magnification,
                        max_white=self.max_white, skip_background=self.skip_background, tissue=self.tissue,
                        resample=self.resample)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else OPTIMIZERS[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (and ``torch.load(weights_only=True)``-safe) plain values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """A config from ``values``; unknown keys are an error naming ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        if "workers" in values:  # 0.x's name of lanes (checkpoints and config files of 0.x)
            values = {k: v for k, v in values.items() if k != "workers"} | {"lanes": values["workers"]}
            if not source.startswith("checkpoint"):
                warnings.warn(f"{source}: 'workers' is renamed 'lanes'; 'workers' goes in the next release",
                              FutureWarning, stacklevel=2)
        unknown = sorted(set(values) - names)
        if unknown:
            raise HistofastError(f"{source}: unknown keys {', '.join(unknown)}; the keys are those of "
                                 "'histofast train --help' with '_' for '-'")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(v, hints[k], k) for k, v in values.items()})


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """A file's value as the field's type: YAML reads ``1e-3`` as a string, JSON ``1`` as an int for a float."""
    kind, options = _parser_type(hint)
    if value is None or kind is None:
        return value
    if options.get("nargs"):
        if not isinstance(value, (list, tuple)):
            raise HistofastError(f"{name}={value!r}: expected a list")
        return [_coerce(v, kind, f"{name}[{i}]") for i, v in enumerate(value)]
    if kind in (int, float) and not isinstance(value, bool):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise HistofastError(f"{name}={value!r}: expected {'an integer' if kind is int else 'a number'}") from None
        if kind is float or number == value or isinstance(value, str):
            return number
    return value


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The keys of a YAML (``.yaml``/``.yml``) or JSON file, a mapping of TrainConfig field names (``-`` or ``_``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise HistofastError(f"--config {p}: cannot read ({e.strerror})") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as e:
        raise HistofastError(f"--config {p}: not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                             f"({e})") from None
    if not isinstance(values, dict):
        raise HistofastError(f"--config {p}: expected a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _parser_type(hint: Any) -> tuple[Any, dict[str, Any]]:
    """argparse type and options for a field's type hint."""
    base = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        base = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        return item, {"nargs": "+"}
    if base is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    return base, {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field (``data`` positional, optional when ``--config`` names it), plus
    ``--config FILE``."""
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file with any of these keys; flags override it")
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)  # 0.x's --lanes
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind, options = _parser_type(hints[f.name])
        if kind is not None:
            options["type"] = kind
        if "choices" in f.metadata:
            options["choices"] = f.metadata["choices"]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help = f.metadata["help"] + ("" if default in (None, "") else f" (default {_show(default)})")
        flag = [f.name] if f.name == "data" else [f"--{f.name.replace('_', '-')}"]
        parser.add_argument(*flag, **({"nargs": "?"} if f.name == "data" else {"dest": f.name}), default=None,
                            help=help, **options)


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def given_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig keys of ``--config FILE`` with the flags given on top."""
    values = read_config_file(args.config) if args.config else {}
    if getattr(args, "workers", None) is not None:
        warnings.warn("--workers: renamed --lanes; --workers goes in the next release", FutureWarning, stacklevel=2)
        values["lanes"] = args.workers
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return values


def from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The config of ``histofast train``: TrainConfig defaults, then ``--config FILE``, then the flags given."""
    return TrainConfig.from_dict(given_values(args), args.config or "flags")
