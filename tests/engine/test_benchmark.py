"""The cost benchmark: MAC counts by hand, peak memory against known allocations, timings, the table."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medseg import layers
from medseg.engine import benchmark
from medseg.engine.benchmark import (
    TABLE_COLUMNS,
    BenchmarkResult,
    benchmark_model,
    count_macs,
    format_table,
    measure_peak_memory,
)
from medseg.errors import InputSizeError, MedsegError, UnknownModelError

MIB = 2**20


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_macs_of_a_strided_conv_equal_the_hand_count(spatial_dims: int) -> None:
    conv = layers.conv(spatial_dims, 3, 8, kernel_size=3, stride=2, padding=1)
    x = torch.randn(2, 3, *[10] * spatial_dims)
    out_extent = (10 + 2 * 1 - 3) // 2 + 1
    expected = 2 * out_extent**spatial_dims * 3**spatial_dims * 3 * 8
    assert count_macs(conv, x) == expected


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_macs_of_grouped_and_transposed_convs(spatial_dims: int) -> None:
    grouped = layers.conv(spatial_dims, 8, 4, kernel_size=3, groups=2)
    x = torch.randn(1, 8, *[6] * spatial_dims)
    assert count_macs(grouped, x) == 6**spatial_dims * 3**spatial_dims * (8 // 2) * 4
    up = layers.conv_transpose(spatial_dims, 8, 4)  # 2x2 stride 2: each input point feeds 2^d outputs
    assert count_macs(up, x) == 6**spatial_dims * 2**spatial_dims * 8 * 4


class _Attention(nn.Module):
    """Multi-head attention of 4096 queries over 64 keys (PVT-v2's first stage at 256x256)."""

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        kv = q[:, :, :64]
        return nn.functional.scaled_dot_product_attention(q, kv, kv)


def test_macs_of_cpu_attention_count_both_products() -> None:
    # Q·Kᵀ and softmax·V: each heads x queries x keys x head-dim multiply-accumulates
    q = torch.randn(1, 2, 4096, 32)
    assert count_macs(_Attention(), q) == 2 * 2 * 4096 * 64 * 32


def test_benchmark_gmacs_of_one_conv_match_the_hand_count() -> None:
    conv = nn.Conv2d(1, 4, 3, padding=1)
    result = benchmark_model(conv, spatial_dims=2, size=16, batch_size=2, warmup=0, repeats=1)
    assert round(result.gmacs * 1e9) == 2 * 16 * 16 * 9 * 1 * 4
    assert result.parameters == 4 * 9 + 4


def test_peak_memory_of_known_allocations() -> None:
    def allocate() -> None:
        first = torch.empty(MIB // 4)  # 1 MiB of float32
        second = torch.empty(MIB // 2)  # 2 MiB: 3 MiB live
        del first
        third = torch.empty(MIB // 8)  # 0.5 MiB: 2.5 MiB live
        del second, third

    peak = measure_peak_memory(allocate)
    assert 3 * MIB <= peak <= 3 * MIB + 64 * 1024


def test_peak_memory_does_not_count_what_was_alive_before() -> None:
    resident = torch.ones(4 * MIB)  # noqa: F841  (16 MiB alive during the measurement)
    assert measure_peak_memory(lambda: torch.empty(MIB // 4)) < 2 * MIB


def test_peak_memory_of_a_training_step_covers_weights_gradients_and_activations() -> None:
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 3, padding=1))
    x_bytes = 2 * 1 * 32 * 32 * 4
    activation_bytes = 2 * 16 * 32 * 32 * 4  # one 16-channel map; conv1 and ReLU outputs are saved
    weight_bytes = sum(p.numel() for p in net.parameters()) * 4
    result = benchmark_model(net, spatial_dims=2, size=32, batch_size=2, warmup=0, repeats=1)
    peak = result.peak_memory_mib * MIB
    at_least = 2 * weight_bytes + x_bytes + 2 * activation_bytes  # weights, grads, input, saved maps
    assert at_least <= peak <= 4 * at_least


def test_latency_and_throughput_are_positive_and_the_shape_is_recorded() -> None:
    net = nn.Conv3d(2, 3, 3, padding=1)
    result = benchmark_model(net, spatial_dims=3, size=(8, 8, 4), batch_size=3, in_channels=2, warmup=1,
                             repeats=2, name="conv3d")
    assert result.model == "conv3d"
    assert result.input_shape == (3, 2, 8, 8, 4)
    assert result.batch_size == 3 and result.spatial_size == (8, 8, 4)
    assert result.latency_ms > 0 and math.isfinite(result.latency_ms)
    assert result.train_samples_per_s > 0 and math.isfinite(result.train_samples_per_s)
    assert result.device == "cpu"


def test_the_callers_model_is_not_trained() -> None:
    net = nn.Conv2d(1, 2, 3, padding=1)
    before = [p.detach().clone() for p in net.parameters()]
    benchmark_model(net, spatial_dims=2, size=8, warmup=1, repeats=2)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_monai_peer_is_measured_by_name() -> None:
    pytest.importorskip("monai")
    result = benchmark_model("monai:basicunet", spatial_dims=2, size=32, warmup=0, repeats=1,
                             options={"features": (4, 4, 8, 8, 16, 4)})
    assert result.model == "monai:basicunet"
    assert result.input_shape == (1, 1, 32, 32)
    assert result.parameters > 0 and result.gmacs > 0


def test_bad_sizes_names_and_devices_raise() -> None:
    with pytest.raises(InputSizeError, match="multiples of 16 .*nearest: 16 or 32"):
        benchmark_model("monai:basicunet", spatial_dims=2, size=20)
    with pytest.raises(MedsegError, match="unknown peer model"):
        benchmark_model("monai:nonet", spatial_dims=2, size=32)
    with pytest.raises(UnknownModelError):
        benchmark_model("no_such_model_here", spatial_dims=2, size=32)
    with pytest.raises(MedsegError, match="device"):
        benchmark_model(nn.Conv2d(1, 1, 1), spatial_dims=2, size=8, device="tpu")
    with pytest.raises(InputSizeError):
        benchmark_model(nn.Conv2d(1, 1, 1), spatial_dims=3, size=(8, 8))


def test_check_size_names_the_sizes_that_work() -> None:
    target = benchmark.BenchmarkTarget("x", (2,), 16, nn.Identity)
    benchmark.check_size(target, 48)
    with pytest.raises(InputSizeError, match=r"nearest: 16\)$"):
        benchmark.check_size(target, 5)
    with pytest.raises(InputSizeError, match="nearest: 96 or 112"):
        benchmark.check_size(target, 100)


def result(model: str, latency_ms: float, size: int = 64, spatial_dims: int = 2) -> BenchmarkResult:
    return BenchmarkResult(model=model, spatial_dims=spatial_dims, input_shape=(1, 1, *[size] * spatial_dims),
                           parameters=1_500_000, gmacs=2.5, peak_memory_mib=100.0, latency_ms=latency_ms,
                           train_samples_per_s=4.0, device="cpu")


def test_format_table_has_the_columns_and_ratios_against_the_peer() -> None:
    rows = [result("a", 10.0), result("b", 25.0), result("b", 40.0, size=32),
            result("a", 20.0, spatial_dims=3)]
    lines = format_table(rows, peer="a").splitlines()
    assert len(lines) == 2 + len(rows)
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == [*TABLE_COLUMNS, "latency vs a"]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert cells[0][:9] == ["a", "2D", "1x1x64x64", "1.50", "2.50", "100.0", "10.0", "100.0", "4.00"]
    assert [c[-1] for c in cells] == ["1.00x", "2.50x", "-", "1.00x"]
    assert format_table(rows).splitlines()[0].rstrip(" |").endswith("latency vs a")


def test_format_table_rejects_an_absent_peer() -> None:
    with pytest.raises(MedsegError, match="peer 'c'"):
        format_table([result("a", 1.0)], peer="c")


def test_pointrend_suffix_wraps_the_model_and_other_suffixes_are_refused() -> None:
    from medseg.engine.benchmark import resolve_target
    from medseg.errors import MedsegError
    from medseg.models.pointrend import PointRend

    target = resolve_target("unet+pointrend")
    assert target.name == "unet+pointrend"
    model = target.build(in_channels=1, num_classes=1, spatial_dims=2, features=4, depth=2)
    assert isinstance(model, PointRend)
    with pytest.raises(MedsegError, match="only suffix"):
        resolve_target("unet+crf")
