"""Reading weight files safely and loading them into ImageNet-shaped models.

Only tensors are ever read: ``.safetensors`` through safetensors, everything else through
``torch.load(weights_only=True)``, which refuses pickles that would run code.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from graft.infrastructure.errors import GraftError

# Keys under which training scripts commonly wrap the state_dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")

# lukemelas EfficientNet-PyTorch -> timm EfficientNet names (see /work/shared/weights/SOURCES.md).
_LUKE_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LUKE_EXPAND = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LUKE_DEPTHWISE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LUKE_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a torch file, without running pickled code.

    Accepts a raw state_dict or one wrapped under ``state_dict`` / ``model`` / ``model_state_dict``,
    and strips a leading ``module.`` (DataParallel) from every key.

    Raises:
        GraftError: Missing file, unreadable file, a pickle needing code, or no tensors inside.
    """
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError, or whatever a malformed header trips
            raise GraftError(f"cannot read safetensors file {path}: {e}") from None
    else:
        try:
            with warnings.catch_warnings():
                # Noise for plain pickles (which are refused or loaded fine anyway).
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # weights_only refuses globals it does not know: a saved nn.Module or hostile code.
            raise GraftError(
                f"refusing to load {path}: it is not a plain tensor file ({_unpickling_reason(e)}); "
                "only state_dicts are accepted: re-save it with torch.save(model.state_dict(), ...) "
                "or as .safetensors"
            ) from None
        except Exception as e:  # junk bytes raise whatever the zip reader or unpickler trips on
            raise GraftError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    return _unwrap(obj, path)


def _unpickling_reason(e: Exception) -> str:
    # torch's message suggests weights_only=False, which graft never does; keep only the cause.
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if m:
        return f"it needs {m.group(1)}"
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
    return m.group(1).strip() if m else "unsupported pickle content"


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise GraftError(f"{path} does not hold a state_dict (found {type(obj).__name__})")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise GraftError(f"{path} holds no tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state(model: nn.Module, sd: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """``model.load_state_dict(sd)`` that keeps the modules' version records.

    A state_dict read from safetensors, or rebuilt as a plain dict, has lost the ``_metadata``
    torch keeps beside the tensors; modules that read their version when loading (torchvision's
    MNASNet refuses to load without one) then get the model's own versions.
    """
    if getattr(sd, "_metadata", None) is None:
        versioned: OrderedDict[str, torch.Tensor] = OrderedDict(sd)
        versioned._metadata = getattr(model.state_dict(), "_metadata", OrderedDict())  # type: ignore[attr-defined]
        sd = versioned
    model.load_state_dict(sd, strict=strict)


# Official torchvision checkpoints that predate a module rename (torchvision converts them while
# loading; graft reads the tensors itself, so it converts them the same way).
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_VIT_OLD_MLP_KEY = re.compile(r"^(.*\.mlp)\.linear_([12])\.(weight|bias)$")


def torchvision_compat(name: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of an official torchvision checkpoint as torchvision does when loading it.

    densenet: ``denselayer1.norm.1.weight`` → ``denselayer1.norm1.weight``; vit: ``mlp.linear_1``
    → ``mlp.0`` and ``mlp.linear_2`` → ``mlp.3``; googlenet: its untrained auxiliary heads dropped
    (graft builds googlenet without them). Keys already in today's form pass unchanged.
    """
    base = name.split(".", 1)[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if base.startswith("densenet") and (m := _DENSENET_OLD_KEY.match(key)):
            key = m.group(1) + m.group(2)
        elif base.startswith("vit_") and (m := _VIT_OLD_MLP_KEY.match(key)):
            key = f"{m.group(1)}.{3 * (int(m.group(2)) - 1)}.{m.group(3)}"
        elif base == "googlenet" and key.startswith(("aux1.", "aux2.")):
            continue
        out[key] = value
    return out


def is_lukemelas(sd: Mapping[str, torch.Tensor]) -> bool:
    """True when the keys follow lukemelas EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks``)."""
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in sd)


def convert_lukemelas(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet state_dict to timm's EfficientNet names.

    The flat block index ``_blocks.i`` becomes ``blocks.s.j``, the i-th (stage, block) pair in
    ``model.blocks``. Blocks with ``_expand_conv`` are inverted residuals, the others depthwise-separable.

    Raises:
        GraftError: The model is not a timm EfficientNet, or the block counts differ.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise GraftError(
            "the weights file is in lukemelas EfficientNet format, which only loads into timm "
            "EfficientNet models (e.g. timm:tf_efficientnet_lite0)"
        )
    positions = [f"blocks.{s}.{j}" for s, stage in enumerate(blocks) for j in range(len(stage))]
    expanding = {
        int(m.group(1)) for k in sd if (m := _LUKE_BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = _LUKE_BLOCK_KEY.match(key)
        if m:
            i, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(positions):
                raise GraftError(
                    f"the lukemelas weights have more blocks than {type(model).__name__} ({len(positions)})"
                )
            table = _LUKE_EXPAND if i in expanding else _LUKE_DEPTHWISE
            out[f"{positions[i]}.{table.get(part, part)}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        out[f"{_LUKE_TOP.get(top, top)}.{rest}" if rest else key] = value
    return out


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    head_prefixes: Iterable[str],
    origin: str,
    strict_head: bool = False,
) -> None:
    """Load ``sd`` into the ImageNet-shaped ``model`` (before its head is replaced).

    Every body tensor must be present with the right shape. Head tensors (under
    ``head_prefixes``) that are missing, extra or differently shaped are skipped unless
    ``strict_head``: the head is replaced afterwards anyway.

    Raises:
        GraftError: Missing, unexpected or mis-shaped body keys (naming the first few).
    """
    head_prefixes = list(head_prefixes)
    own = model.state_dict()
    # Checkpoints saved before torch 0.4.1 (many published ones) have no BatchNorm step counter;
    # torch fills it in when loading them, and so does graft.
    untracked = {k: own[k] for k in own if k.endswith(".num_batches_tracked") and k not in sd}
    sd = {**sd, **untracked}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    skip: set[str] = set()
    if not strict_head:
        skip = {k for k in missing + unexpected + mismatched if _under(k, head_prefixes)}
    problems = []
    if body := [k for k in missing if k not in skip]:
        problems.append(f"missing {_few(body)}")
    if body := [k for k in unexpected if k not in skip]:
        problems.append(f"unexpected {_few(body)}")
    if body := [k for k in mismatched if k not in skip]:
        shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in body]
        problems.append(f"wrong shape {_few(shapes, 3)}")
    if problems:
        raise GraftError(
            f"{origin} does not fit {type(model).__name__}: {'; '.join(problems)}. "
            "Is it for a different architecture?"
        )
    to_load = {k: v for k, v in sd.items() if k in own and k not in skip}
    # strict=False only because skipped head keys are absent; everything else was checked above.
    load_state(model, to_load, strict=not skip)
