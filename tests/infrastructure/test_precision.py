"""The precision policy: what each ``--precision`` means for training, frozen features and
inference on each kind of device, forced both ways whatever CPU runs the test."""

import pytest
import torch

from graft import GraftError
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.runtime import PrecisionPlan, autocast, cpu_bf16_supported, precision_plan

CPU = torch.device("cpu")


def test_the_environment_forces_either_kind_of_cpu(native_bf16):
    assert cpu_bf16_supported() is native_bf16


def test_a_bad_override_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GRAFT_CPU_BF16", "yes")
    with pytest.raises(GraftError, match="GRAFT_CPU_BF16 must be 0 or 1, not 'yes'"):
        precision_plan("auto", CPU)


def test_auto_on_cpu_uses_bf16_only_for_frozen_features_and_only_where_native(native_bf16):
    plan = precision_plan("auto", CPU)
    assert plan.features == ("bf16" if native_bf16 else "fp32")
    assert plan.train == "fp32"  # bf16 backward passes on the CPU were not shown to keep accuracy
    assert plan.inference == "fp32"
    assert plan.cpu_bf16 is native_bf16 and plan.asked == "auto" and plan.device == "cpu"


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_an_explicit_precision_trains_in_it_and_still_infers_in_fp32(native_bf16, name):
    plan = precision_plan(name, CPU)
    assert (plan.train, plan.features, plan.inference) == (name, name, "fp32")


@pytest.mark.parametrize("bf16_gpu", [True, False])
def test_auto_on_cuda_is_mixed_precision_for_training_and_fp32_for_inference(monkeypatch, bf16_gpu):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    plan = precision_plan("auto", torch.device("cuda", 0))
    low = "bf16" if bf16_gpu else "fp16"
    assert (plan.train, plan.features, plan.inference) == (low, low, "fp32")
    assert not plan.cpu_bf16 and "cuda;" in plan.describe()


def test_fp16_is_refused_on_the_cpu_and_unknown_names_everywhere():
    with pytest.raises(GraftError, match="fp16 needs a GPU"):
        precision_plan("fp16", CPU)
    for bad in ("fp8", ""):
        with pytest.raises(GraftError, match="unknown precision"):
            precision_plan(bad, CPU)


def test_config_refuses_an_unknown_precision():
    with pytest.raises(GraftError, match="unknown precision 'x'"):
        TrainConfig(precision="x").resolved()
    for name in ("auto", "fp32", "bf16", "fp16"):
        assert TrainConfig(precision=name).resolved().precision == name


def test_the_plan_reads_back_from_its_record_and_describes_itself(monkeypatch):
    monkeypatch.setenv("GRAFT_CPU_BF16", "1")
    plan = precision_plan("auto", CPU)
    assert PrecisionPlan.from_dict({**plan.to_dict(), "added_later": 1}) == plan
    assert plan.describe() == (
        "train fp32, frozen features bf16, inference fp32 (cpu, native bf16; --precision auto)"
    )


def test_fp32_on_cuda_turns_tf32_off_for_its_duration_only():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with autocast(torch.device("cuda", 0), "fp32"):  # sets flags only: runs without a GPU
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_autocast_on_the_cpu_runs_what_it_is_told(native_bf16):
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, "fp32"):
        assert (x @ w).dtype == torch.float32
    with autocast(CPU, "bf16"):
        assert (x @ w).dtype == torch.bfloat16
