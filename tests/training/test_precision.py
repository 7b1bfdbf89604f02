"""Choosing the precision: what ``auto`` means on the CPU, and what is refused."""

import pytest
import torch

from graft import GraftError
from graft.config import TrainConfig
from graft.training import runtime
from graft.training.runtime import resolve_precision

CPU = torch.device("cpu")


def test_auto_on_cpu_without_native_bf16_is_fp32(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", CPU, training=True) == "fp32"


def test_auto_on_cpu_with_native_bf16_is_bf16_for_inference_only(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("auto", CPU, training=True) == "fp32"


@pytest.mark.parametrize("native", [False, True])
def test_explicit_names_are_kept(monkeypatch, native):
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: native)
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # asked for: emulated if need be
    assert resolve_precision("bf16", CPU, training=True) == "bf16"


def test_fp16_on_cpu_is_refused():
    with pytest.raises(GraftError, match="fp16 needs a GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(GraftError, match="fp16 needs a GPU"):
        resolve_precision("fp16", CPU, training=True)


def test_unknown_name_is_refused():
    with pytest.raises(GraftError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", CPU)
    with pytest.raises(GraftError, match="unknown precision"):
        resolve_precision("", CPU)


def test_config_refuses_an_unknown_precision():
    with pytest.raises(GraftError, match="unknown precision 'x'"):
        TrainConfig(precision="x").resolved()
    for name in ("auto", "fp32", "bf16", "fp16"):
        assert TrainConfig(precision=name).resolved().precision == name


def test_autocast_is_a_no_op_for_fp32_and_bf16_when_asked():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with runtime.autocast(CPU, "fp32"):
        assert (a @ b).dtype == torch.float32
    with runtime.autocast(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
