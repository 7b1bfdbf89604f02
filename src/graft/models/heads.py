"""Finding, replacing and separating the classifier head.

Head rule for torchvision models: the head is the last ``nn.Linear`` in module registration
order (resnet/regnet/shufflenet/googlenet/inception ``fc``, densenet ``classifier``,
vgg/alexnet/mobilenet/efficientnet/convnext/mnasnet/maxvit ``classifier[-1]``, vit ``heads.head``,
swin ``head``). Two special cases: squeezenet has no Linear, its head is the 1x1 conv
``classifier.1``; inception_v3 also has the auxiliary ``AuxLogits.fc``. For timm models the
head names come from ``pretrained_cfg["classifier"]`` (one name or a tuple, possibly dotted).

MLP heads (``head_hidden``) replace each final Linear by Linear-ReLU-Dropout-Linear. Auxiliary
heads (a name containing "aux", e.g. inception's ``AuxLogits.fc``) stay a single Linear: they only
feed the auxiliary training loss. 1x1-conv heads (squeezenet, timm's dla) get the convolutional
equivalent: Conv1x1-ReLU-Dropout-Conv1x1. New Linear layers keep PyTorch's default init; new
1x1 convs get torchvision's squeezenet init (normal, std 0.01, zero bias).
"""

from __future__ import annotations

from torch import nn

from graft.infrastructure.errors import GraftError

# Expand body blocks until there are at least this many (a resnet has six: conv1, bn1, layer1-4).
MIN_BLOCKS = 6


def is_aux(name: str) -> bool:
    """Auxiliary heads (inception's ``AuxLogits.fc``) get a plain Linear even with an MLP head."""
    return "aux" in name.lower()


def torchvision_head_names(model: nn.Module) -> list[str]:
    """Head module names of an ImageNet-shaped torchvision model (see the module docstring)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        main, last = linears[-1]
        # Auxiliary classifiers predict the same classes as the main head.
        extra = [n for n, m in linears[:-1] if is_aux(n) and m.out_features == last.out_features]
        return [*extra, main]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    if convs:  # squeezenet: the classifier is a 1x1 conv
        return [convs[-1]]
    raise GraftError(f"cannot find the classifier of {type(model).__name__}")


def timm_head_names(model: nn.Module) -> list[str]:
    """Head module names of a timm model, from its pretrained_cfg, checked to exist."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier")
    names = [names] if isinstance(names, str) else list(names or [])
    modules = dict(model.named_modules())
    if names and all(n in modules for n in names):
        return names
    return torchvision_head_names(model)  # same generic rule as a fallback


def _linear(in_features: int, num_classes: int) -> nn.Linear:
    return nn.Linear(in_features, num_classes)  # PyTorch's default (kaiming-uniform) init


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    # torchvision's squeezenet init for its classifier conv
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _mlp(first: nn.Module, last: nn.Module, dropout: float) -> nn.Sequential:
    return nn.Sequential(first, nn.ReLU(inplace=True), nn.Dropout(dropout), last)


def new_head(old: nn.Module, num_classes: int, hidden: int | None, dropout: float, *, name: str) -> nn.Module:
    """A fresh head with the same input width as ``old``.

    Linear heads become ``Linear`` or ``Linear-ReLU-Dropout-Linear``; squeezenet-style 1x1
    conv heads become a 1x1 ``Conv2d`` or the conv equivalent of the MLP.

    Raises:
        GraftError: ``old`` is neither a Linear nor a 1x1 Conv2d.
    """
    if isinstance(old, nn.Linear):
        if hidden is None or is_aux(name):
            return _linear(old.in_features, num_classes)
        return _mlp(_linear(old.in_features, hidden), _linear(hidden, num_classes), dropout)
    if isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
        if hidden is None:
            return _conv(old.in_channels, num_classes)
        return _mlp(_conv(old.in_channels, hidden), _conv(hidden, num_classes), dropout)
    raise GraftError(f"cannot replace the classifier '{name}' ({type(old).__name__}): not a Linear layer")


def replace_heads(
    model: nn.Module, names: list[str], num_classes: int, hidden: int | None, dropout: float
) -> None:
    """Swap each named head module for :func:`new_head`; keeps ``model.num_classes`` in step."""
    for name in names:
        old = model.get_submodule(name)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new_head(old, num_classes, hidden, dropout, name=name))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes  # squeezenet's forward and timm's bookkeeping read it


# ---------------------------------------------------------------------------------------------
# Body blocks


class _Item:
    """A candidate block: a submodule plus parameters held directly by opened ancestors."""

    def __init__(self, name: str, module: nn.Module, extra: list[nn.Parameter] | None = None) -> None:
        self.name, self.module, self.extra = name, module, extra or []

    def size(self) -> int:
        return sum(p.numel() for p in self.module.parameters()) + sum(p.numel() for p in self.extra)

    def openable(self) -> bool:
        return any(_has_params(c) for c in self.module.children())


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _holds_head(name: str, heads: set[str]) -> bool:
    return any(h.startswith(name + ".") for h in heads)


def _open(item: _Item, heads: set[str]) -> tuple[list[_Item], list[nn.Parameter]]:
    """One level down: the parameterised non-head children, and the parameters left over.

    Parameters held directly by the opened module (a ViT's ``cls_token``/``pos_embed``) go with
    its first child block, so that every block name stays a submodule name.
    """
    dot = f"{item.name}." if item.name else ""
    own = item.extra + list(item.module.parameters(recurse=False))
    children = [
        _Item(dot + n, c) for n, c in item.module.named_children() if dot + n not in heads and _has_params(c)
    ]
    if children:
        children[0].extra = own
        return children, []
    return [], own


def split_body(model: nn.Module, head_names: list[str]) -> list[tuple[str, list[nn.Parameter]]]:
    """Named body blocks covering every non-head parameter once, ordered input -> output.

    Start from the model's parameterised children (registration order). A child that contains
    a head is always opened up so the head is left out (inception's ``AuxLogits`` becomes
    ``AuxLogits.conv0`` and ``AuxLogits.conv1``). Then, while there are fewer than
    :data:`MIN_BLOCKS` blocks, the largest block that has parameterised children is opened one
    level (densenet's ``features``, timm efficientnet's ``blocks``, a ViT's encoder layers);
    a resnet already has six (conv1, bn1, layer1-4) and stays as it is.

    Every block name is a submodule name (``model.get_submodule(name)`` works). Parameters held
    directly by an opened module join its first child block: a ViT's ``cls_token`` and
    ``pos_embed`` are trained with ``patch_embed``.
    """
    heads = set(head_names)
    items, leftover = _open(_Item("", model), heads)

    def replace(i: int) -> None:
        children, rest = _open(items[i], heads)
        items[i : i + 1] = children
        if rest:  # nothing left to carry them: keep them with a neighbouring block
            (items[max(i - 1, 0)].extra if items else leftover).extend(rest)

    while True:  # open up every block that holds a head
        i = next((i for i, it in enumerate(items) if _holds_head(it.name, heads)), None)
        if i is None:
            break
        replace(i)
    while len(items) < MIN_BLOCKS:
        candidates = [i for i, it in enumerate(items) if it.openable()]
        if not candidates:
            break
        replace(max(candidates, key=lambda j: items[j].size()))
    if items and leftover:
        items[0].extra.extend(leftover)
    seen: set[int] = set()
    blocks = []
    for it in items:
        params = [p for p in [*it.extra, *it.module.parameters()] if id(p) not in seen]
        seen.update(id(p) for p in params)  # tied weights count once
        if params:
            blocks.append((it.name, params))
    if not items and leftover:  # degenerate: parameters only on the root module itself
        blocks.append(("", leftover))
    return blocks
