"""Tests of the encoder contract, registry and weight loading (medseg.encoders.base)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from medseg.encoders.base import (
    Encoder,
    adapt_input_conv,
    build_encoder,
    create_encoder,
    encoder_info,
    for_dims,
    get_encoder_entry,
    list_encoders,
    load_encoder_weights,
    read_safetensors,
    read_state_dict,
)
from medseg.errors import MedsegError


class TinyEncoder(Encoder):
    """A two-level stand-in encoder: conv-BN-ReLU stem, then a strided conv."""

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2, width: int = 4) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        bn = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        self.stem = conv(in_channels, width, 3, padding=1, bias=False)
        self.bn = bn(width)
        self.down = conv(width, 2 * width, 3, stride=2, padding=1)
        self.spatial_dims = spatial_dims
        self.channels = [width, 2 * width]
        self.reductions = [1, 2]
        self.first_conv = "stem.weight"

    def forward(self, x: Tensor) -> list[Tensor]:
        x0 = torch.relu(self.bn(self.stem(x)))
        return [x0, self.down(x0)]


def _randomise(module: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine so that loading them is visible in the output."""
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return module.eval()


def _save(state: object, path: Path) -> Path:
    torch.save(state, path)
    return path


def _outputs_equal(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------ .pth files


def test_pth_round_trip_gives_equal_outputs(tmp_path: Path) -> None:
    source = _randomise(TinyEncoder())
    path = _save(source.state_dict(), tmp_path / "tiny.pth")
    torch.manual_seed(1)
    target = TinyEncoder().eval()
    x = torch.randn(2, 3, 8, 8)
    assert not _outputs_equal(source(x), target(x))
    report = load_encoder_weights(target, path)
    assert report.loaded == len(source.state_dict())
    assert report.missing == report.unexpected == report.mismatched == report.adapted == []
    assert _outputs_equal(source(x), target(x))


def test_round_trip_of_registered_encoder(tmp_path: Path) -> None:
    source = _randomise(create_encoder("resnet18", widths=(4, 4, 8, 8), stem_width=4, depths=(1, 1, 1, 1)))
    path = _save(source.state_dict(), tmp_path / "r18.pt")
    torch.manual_seed(3)
    target = create_encoder("resnet18", weights=path, widths=(4, 4, 8, 8), stem_width=4,
                            depths=(1, 1, 1, 1)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert _outputs_equal(source(x), target(x))


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module", "state_dict+module"])
def test_wrappers_are_removed(tmp_path: Path, wrapper: str) -> None:
    state = TinyEncoder().state_dict()
    if "module" in wrapper:
        state = {f"module.{k}": v for k, v in state.items()}
    if wrapper.startswith("state_dict"):
        payload: object = {"state_dict": state, "epoch": 3}
    elif wrapper == "model":
        payload = {"model": state, "optimizer": {"lr": torch.tensor(0.1)}}
    else:
        payload = state
    loaded = read_state_dict(_save(payload, tmp_path / "w.pth"))
    assert sorted(loaded) == sorted(TinyEncoder().state_dict())
    target = TinyEncoder()
    assert load_encoder_weights(target, tmp_path / "w.pth").loaded == len(loaded)


def test_module_prefix_kept_when_not_on_every_key(tmp_path: Path) -> None:
    state = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    assert sorted(read_state_dict(_save(state, tmp_path / "w.pth"))) == ["b", "module.a"]


def test_classifier_keys_are_ignored(tmp_path: Path) -> None:
    state = TinyEncoder().state_dict()
    state.update({"fc.weight": torch.zeros(10, 8), "fc.bias": torch.zeros(10),
                  "head.fc.weight": torch.zeros(10, 8), "classifier.0.weight": torch.zeros(2)})
    report = load_encoder_weights(TinyEncoder(), _save(state, tmp_path / "w.pth"))
    assert sorted(report.classifier) == ["classifier.0.weight", "fc.bias", "fc.weight", "head.fc.weight"]
    assert report.unexpected == []


def test_missing_num_batches_tracked_is_not_an_error(tmp_path: Path) -> None:
    state = {k: v for k, v in TinyEncoder().state_dict().items() if not k.endswith("num_batches_tracked")}
    report = load_encoder_weights(TinyEncoder(), _save(state, tmp_path / "w.pth"))
    assert report.missing == []


def test_half_precision_weights_are_cast(tmp_path: Path) -> None:
    source = TinyEncoder()
    state = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    target = TinyEncoder()
    load_encoder_weights(target, _save(state, tmp_path / "w.pth"))
    assert target.stem.weight.dtype == torch.float32
    assert torch.equal(target.stem.weight, source.stem.weight.half().float())


def test_convert_state_dict_hook_is_applied(tmp_path: Path) -> None:
    class Renaming(TinyEncoder):
        def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k.replace("original_stem", "stem"): v for k, v in state.items()}

    source = TinyEncoder()
    state = {k.replace("stem", "original_stem"): v for k, v in source.state_dict().items()}
    target = Renaming()
    load_encoder_weights(target, _save(state, tmp_path / "w.pth"))
    assert torch.equal(target.stem.weight, source.stem.weight)


# ------------------------------------------------------------------------------------------ safetensors


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]],
                       metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file written by hand: u64 little-endian header size, JSON header, raw data."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blob = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob)
    return path


def test_read_safetensors_f32_and_bf16_by_hand(tmp_path: Path) -> None:
    f32 = np.array([[1.0, -2.5, 3.25], [0.0, 7.0, -0.125]], dtype=np.float32)
    # BF16 is the upper 16 bits of the float32 pattern: 1.0 = 0x3F80, -2.0 = 0xC000, 0.15625 = 0x3E20,
    # 3.0 = 0x4040 (little-endian bytes below)
    bf16 = bytes([0x80, 0x3F, 0x00, 0xC0, 0x20, 0x3E, 0x40, 0x40])
    path = _write_safetensors(tmp_path / "w.safetensors", {
        "a.weight": ("F32", [2, 3], f32.tobytes()),
        "b.weight": ("BF16", [2, 2], bf16),
        "c.index": ("I64", [2], np.array([5, -1], dtype=np.int64).tobytes()),
    }, metadata={"format": "pt"})
    tensors = read_safetensors(path)
    assert sorted(tensors) == ["a.weight", "b.weight", "c.index"]
    assert tensors["a.weight"].dtype == torch.float32
    assert torch.equal(tensors["a.weight"], torch.from_numpy(f32))
    assert tensors["b.weight"].dtype == torch.float32
    assert torch.equal(tensors["b.weight"], torch.tensor([[1.0, -2.0], [0.15625, 3.0]]))
    assert torch.equal(tensors["c.index"], torch.tensor([5, -1]))


def test_safetensors_loads_into_encoder(tmp_path: Path) -> None:
    source = _randomise(TinyEncoder())
    tensors = {}
    for key, value in source.state_dict().items():
        array = value.numpy()
        dtype = "F32" if array.dtype == np.float32 else "I64"
        tensors[key] = (dtype, list(array.shape), array.tobytes())
    path = _write_safetensors(tmp_path / "tiny.safetensors", tensors)
    target = TinyEncoder().eval()
    load_encoder_weights(target, path)
    x = torch.randn(2, 3, 8, 8)
    assert _outputs_equal(source(x), target(x))


def test_bf16_safetensors_weights_load_rounded(tmp_path: Path) -> None:
    source = TinyEncoder()
    weight = source.stem.weight.detach()
    bits = (weight.numpy().view(np.uint32) >> 16).astype(np.uint16)  # truncation to bf16
    state = {k: v for k, v in source.state_dict().items() if k != "stem.weight"}
    tensors = {k: ("F32" if v.is_floating_point() else "I64", list(v.shape), v.numpy().tobytes())
               for k, v in state.items()}
    tensors["stem.weight"] = ("BF16", list(weight.shape), bits.tobytes())
    target = TinyEncoder()
    load_encoder_weights(target, _write_safetensors(tmp_path / "w.safetensors", tensors))
    expected = torch.from_numpy((bits.astype(np.uint32) << 16).view(np.float32))
    assert torch.equal(target.stem.weight.detach(), expected)
    assert torch.allclose(target.stem.weight, weight, rtol=1e-2, atol=0)


# ------------------------------------------------------------------------------------------ first conv


def test_adapt_input_conv_hand_computed() -> None:
    weight = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reshape(2, 3, 1, 1)
    assert torch.equal(adapt_input_conv(weight, 3), weight)
    assert torch.equal(adapt_input_conv(weight, 1).flatten(), torch.tensor([6.0, 15.0]))
    five = adapt_input_conv(weight, 5).reshape(2, 5)
    expected = torch.tensor([[1.0, 2.0, 3.0, 1.0, 2.0], [4.0, 5.0, 6.0, 4.0, 5.0]]) * 3 / 5
    assert torch.allclose(five, expected)
    two = adapt_input_conv(weight, 2).reshape(2, 2)
    assert torch.allclose(two, torch.tensor([[1.0, 2.0], [4.0, 5.0]]) * 1.5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_grey_image_matches_rgb_with_equal_channels(tmp_path: Path, spatial_dims: int) -> None:
    rgb = _randomise(TinyEncoder(3, spatial_dims))
    path = _save(rgb.state_dict(), tmp_path / "rgb.pth")
    grey = TinyEncoder(1, spatial_dims).eval()
    report = load_encoder_weights(grey, path)
    assert report.adapted == ["stem.weight"]
    image = torch.randn(2, 1, *[6] * spatial_dims)
    for a, b in zip(grey(image), rgb(image.repeat(1, 3, *[1] * spatial_dims)), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_five_channels_repeat_and_rescale(tmp_path: Path) -> None:
    rgb = TinyEncoder(3)
    path = _save(rgb.state_dict(), tmp_path / "rgb.pth")
    five = TinyEncoder(5)
    load_encoder_weights(five, path)
    w = rgb.stem.weight.detach()
    expected = torch.cat([w, w[:, :2]], dim=1) * (3 / 5)
    assert torch.allclose(five.stem.weight, expected)
    assert torch.equal(five.bn.running_var, rgb.bn.running_var)


def test_adaptation_applies_only_to_first_conv(tmp_path: Path) -> None:
    wide = TinyEncoder(3, width=4)
    state = wide.state_dict()
    state["down.weight"] = torch.zeros(8, 5, 3, 3)  # wrong input channels on a later conv
    with pytest.raises(MedsegError, match="down.weight"):
        load_encoder_weights(TinyEncoder(3), _save(state, tmp_path / "w.pth"))


def test_registered_encoder_first_conv_adapts(tmp_path: Path) -> None:
    options = {"widths": (4, 4, 4, 4, 4), "depth": 2}
    rgb = create_encoder("vgg16", **options)
    path = _save(rgb.state_dict(), tmp_path / "vgg.pth")
    grey = create_encoder("vgg16", in_channels=1, weights=path, **options)
    assert torch.allclose(grey.features[0].weight, rgb.features[0].weight.sum(1, keepdim=True))


# ------------------------------------------------------------------------------------------ errors


def test_strict_missing_keys_name_file_and_keys(tmp_path: Path) -> None:
    state = TinyEncoder().state_dict()
    del state["bn.running_var"]
    path = _save(state, tmp_path / "partial.pth")
    with pytest.raises(MedsegError) as info:
        load_encoder_weights(TinyEncoder(), path)
    message = str(info.value)
    assert str(path) in message and "bn.running_var" in message and "missing" in message
    report = load_encoder_weights(TinyEncoder(), path, strict=False)
    assert report.missing == ["bn.running_var"]


def test_strict_unexpected_keys_name_file_and_keys(tmp_path: Path) -> None:
    state = TinyEncoder().state_dict()
    state["layer9.conv.weight"] = torch.zeros(1)
    path = _save(state, tmp_path / "extra.pth")
    with pytest.raises(MedsegError, match=r"extra\.pth.*unexpected.*layer9\.conv\.weight"):
        load_encoder_weights(TinyEncoder(), path)
    assert load_encoder_weights(TinyEncoder(), path, strict=False).unexpected == ["layer9.conv.weight"]


def test_strict_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    path = _save(TinyEncoder(width=6).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(MedsegError, match=r"wide\.pth.*shape mismatches.*\(6, 3, 3, 3\) vs \(4, 3, 3, 3\)"):
        load_encoder_weights(TinyEncoder(width=4), path)
    target = TinyEncoder(width=4)
    before = target.stem.weight.detach().clone()
    report = load_encoder_weights(target, path, strict=False)
    # everything but the scalar bn.num_batches_tracked differs in shape
    assert report.loaded == 1 and len(report.mismatched) == len(TinyEncoder().state_dict()) - 1
    assert torch.equal(target.stem.weight, before)


def test_many_problem_keys_are_previewed(tmp_path: Path) -> None:
    state = {f"extra{i}.weight": torch.zeros(1) for i in range(9)} | TinyEncoder().state_dict()
    with pytest.raises(MedsegError, match=r"9 unexpected keys .*\(9 in all\)"):
        load_encoder_weights(TinyEncoder(), _save(state, tmp_path / "w.pth"))


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.pt", "garbage.bin"])
def test_corrupt_torch_file_names_path(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a checkpoint\x00\x01\x02")
    with pytest.raises(MedsegError, match=str(path).replace(".", r"\.")):
        load_encoder_weights(TinyEncoder(), path)


def test_corrupt_safetensors_header_names_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"{not json!!}")
    with pytest.raises(MedsegError, match=r"bad\.safetensors"):
        read_state_dict(path)
    path.write_bytes(b"\x01\x02")  # shorter than the header length
    with pytest.raises(MedsegError, match=r"bad\.safetensors"):
        read_state_dict(path)


def test_unsupported_safetensors_dtype(tmp_path: Path) -> None:
    path = _write_safetensors(tmp_path / "w.safetensors", {"a": ("F8_E4M3", [1], b"\x00")})
    with pytest.raises(MedsegError, match="F8_E4M3"):
        read_state_dict(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(MedsegError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")
    with pytest.raises(MedsegError, match="mapping"):
        read_state_dict(_save([torch.zeros(1)], tmp_path / "list.pth"))
    with pytest.raises(MedsegError, match="mapping"):
        read_state_dict(_save({"a": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pth"))


# ------------------------------------------------------------------------------------------ registry


def test_builtin_encoders_are_registered() -> None:
    names = list_encoders()
    for name in ("vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "res2net50_v1b_26w_4s"):
        assert name in names
    assert "res2net50d" not in names  # an alias, not a name
    assert get_encoder_entry("res2net50d").name == "res2net50_v1b_26w_4s"
    assert get_encoder_entry("ResNet34").name == "resnet34"
    info = encoder_info("res2net50d")
    assert info["timm_name"] == "res2net50d" and info["params"] == 23_669_352 and info["dims"] == [2, 3]


@pytest.mark.parametrize(("typo", "suggestion"), [("resnet35", "resnet34"), ("vgg61", "vgg16"),
                                                  ("res2net50_v1b", "res2net50")])
def test_unknown_encoder_suggests_close_names(typo: str, suggestion: str) -> None:
    with pytest.raises(MedsegError, match=f"unknown encoder '{typo}'.*did you mean.*{suggestion}"):
        create_encoder(typo)


def test_unknown_encoder_without_close_names_lists_known() -> None:
    with pytest.raises(MedsegError, match="known encoders: .*resnet34"):
        create_encoder("qqqqqqqqqqqqqqqqqqqq")


def test_create_encoder_rejects_bad_options() -> None:
    with pytest.raises(MedsegError, match="'resnet18'.*no_such_option"):
        create_encoder("resnet18", no_such_option=3)
    with pytest.raises(MedsegError, match="spatial_dims 2 or 3, got 1"):
        create_encoder("resnet18", spatial_dims=1)
    with pytest.raises(MedsegError, match="in_channels"):
        create_encoder("resnet18", in_channels=0)


def test_build_encoder_with_instance() -> None:
    tiny = TinyEncoder(spatial_dims=3)
    assert build_encoder(tiny, in_channels=3, spatial_dims=3) is tiny
    with pytest.raises(MedsegError, match="3D but the model is 2D"):
        build_encoder(tiny, in_channels=3, spatial_dims=2)
    with pytest.raises(MedsegError, match="encoder_options"):
        build_encoder(tiny, in_channels=3, spatial_dims=3, options={"widths": (1, 2)})
    with pytest.raises(MedsegError, match="registered name or an Encoder"):
        build_encoder(nn.Conv2d(1, 1, 1), in_channels=1, spatial_dims=2)  # type: ignore[arg-type]


def test_build_encoder_with_instance_loads_weights(tmp_path: Path) -> None:
    source = _randomise(TinyEncoder())
    path = _save(source.state_dict(), tmp_path / "w.pth")
    target = build_encoder(TinyEncoder().eval(), in_channels=3, spatial_dims=2, weights=path)
    x = torch.randn(1, 3, 8, 8)
    assert _outputs_equal(source(x), target(x))


def test_build_encoder_by_name_passes_options() -> None:
    encoder = build_encoder("vgg16_bn", in_channels=2, spatial_dims=3, options={"widths": (2, 3, 4, 5, 6),
                                                                                 "depth": 3})
    assert encoder.spatial_dims == 3 and encoder.channels == [2, 3, 4]
    assert encoder.features[0].weight.shape == (2, 2, 3, 3, 3)
    assert encoder.input_multiple == 4


def _truncated_safetensors(path: Path) -> Path:
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 6)  # 6 of the 16 data bytes
    return path


def _list_header_safetensors(path: Path) -> Path:
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    return path


@pytest.mark.parametrize("make", [_truncated_safetensors, _list_header_safetensors])
def test_malformed_safetensors_names_path(tmp_path: Path, make) -> None:  # noqa: ANN001
    path = make(tmp_path / "broken.safetensors")
    with pytest.raises(MedsegError, match=r"broken\.safetensors"):
        read_state_dict(path)


def test_for_dims_picks_per_dims_values() -> None:
    assert for_dims({2: "a", 3: "b"}, 3) == "b"
    assert for_dims({"2": {"x": 1}}, 2) == {"x": 1}
    assert for_dims({"depths": 1}, 2) == {"depths": 1}
    with pytest.raises(MedsegError, match="spatial_dims 3"):
        for_dims({2: "a"}, 3)


def test_build_encoder_takes_the_default_and_options_keyed_by_dims() -> None:
    options = {2: {"widths": (4, 8, 16, 32), "stem_width": 4}, 3: {"widths": (2, 4, 8, 16), "stem_width": 2}}
    encoder = build_encoder(None, in_channels=1, spatial_dims=3, options=options,
                            default={2: "resnet34", 3: "resnet18"})
    assert encoder.spatial_dims == 3 and encoder.channels == [2, 2, 4, 8, 16]
    with pytest.raises(MedsegError, match="no default encoder"):
        build_encoder(None, in_channels=1, spatial_dims=2)
