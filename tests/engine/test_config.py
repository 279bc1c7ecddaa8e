"""Typed configs: presets, overrides, error messages, YAML round trip (schedules: test_schedules.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from helpers import tiny_config
from medseg import create_model, model_info
from medseg.data.datasets import load_dataset
from medseg.data.synthetic import write_polyp_dataset
from medseg.engine import config as config_module
from medseg.engine.config import (
    ConfigError,
    InferenceConfig,
    RunConfig,
    config_from_dict,
    config_to_dict,
    dataclass_from_dict,
    load_config,
    save_config,
)
from medseg.engine.trainer import train
from medseg.errors import MedsegError
from medseg.losses import build_loss

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))


def test_the_presets_exist() -> None:
    names = {p.name for p in PRESETS}
    assert {"unet-synthetic-2d.yaml", "unet3d-hippocampus.yaml", "unet-kvasir.yaml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_validates_and_builds_its_model(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert config.name == path.stem
    dims = config.spatial_dims
    assert dims in (2, 3)
    channels = config.data.output_channels(None) or 2  # None: derived from the data set at run time
    model = create_model(config.model.name, in_channels=3 if config.data.normalization == "rgb" else 1,
                         num_classes=channels, spatial_dims=dims, **config.model.options)
    info = model_info(config.model.name)
    if info["task"] == "semantic":  # instance models (Mask R-CNN) compute their own losses
        spec = config.loss.build_spec(config.data.label_mode, info["default_loss"])
        for term in spec["losses"]:  # weight files named by a preset are the user's (LossNet's VGG)
            if isinstance(term.get("weights"), str) and not Path(term["weights"]).is_file():
                term.update(weights=None, random_features=True)
        loss = build_loss(spec)
        assert isinstance(loss, torch.nn.Module)
    shape = config.data.patch_size or config.data.resize
    if shape is not None:  # the training shape suits the network's input multiple
        multiple = getattr(model, "input_multiple", None) or info["input_multiple"]
        assert all(s % multiple == 0 for s in shape)
    assert load_config(save_config(config, tmp_path / "config.yaml")) == config


def test_validation_metrics_are_case_metrics_and_error_rates_are_lower_is_better() -> None:
    from medseg.metrics.case import METRIC_NAMES
    from medseg.metrics.instance import AP_METRICS, CASE_METRICS

    assert set(config_module.SEMANTIC_VAL_METRICS) <= set(METRIC_NAMES)
    assert set(config_module.INSTANCE_VAL_METRICS) <= set(CASE_METRICS + AP_METRICS)
    config = load_config(None, ["train.val_metrics=[dice, fpr, fnr]", "train.best_metric=fnr"])
    assert config.train.best_metric == "fnr"
    assert {"fpr", "fnr"} <= config_module.LOWER_IS_BETTER and "recall" not in config_module.LOWER_IS_BETTER


def test_hippocampus_preset_is_the_nnunet_recipe() -> None:
    config = load_config(CONFIGS / "unet3d-hippocampus.yaml")
    assert (config.data.label_mode, config.data.num_classes, config.spatial_dims) == ("multiclass", 3, 3)
    assert (config.optim.name, config.optim.nesterov, config.optim.momentum) == ("sgd", True, 0.99)
    assert (config.schedule.name, config.schedule.power) == ("poly", 0.9)
    assert config.data.root.endswith("shared/data/msd-task04-hippocampus")


def test_defaults_follow_nnunet() -> None:
    config = load_config(None)
    assert config.inference.step == 0.5 and config.inference.sigma_scale == 0.125
    assert config.inference.mirror and config.train.val_metrics == ["dice"]
    assert config.train.iterations_per_epoch == 250 and config.train.grad_clip == 12.0
    assert config.resolved_run_dir() == Path("runs/run")


def test_overrides_of_nested_keys_lists_and_types(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 50}\nmodel: {options: {depth: 3}}\n")
    config = load_config(path, ["train.epochs=5", "optim.lr=1e-3", "model.options.features=16",
                                "data.patch_size=[64,64]", "train.grad_clip=null", "train.compile=true",
                                "optim.betas=[0.8, 0.99]",
                                "loss.losses=[{name: dice, weight: 2}, {name: ce}]",
                                "optim.param_groups=[{match: encoder., lr: 1e-4}]", "name=my run"])
    assert config.train.epochs == 5 and isinstance(config.train.epochs, int)
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)  # YAML 1.1 reads 1e-3 as text
    assert config.model.options == {"depth": 3, "features": 16}  # merged with the file's options
    assert config.data.patch_size == (64, 64) and config.spatial_dims == 2
    assert config.train.grad_clip is None and config.train.compile is True
    assert config.optim.betas == (0.8, 0.99)
    assert config.loss.terms("dice_ce") == [{"weight": 2, "name": "dice"}, {"weight": 1.0, "name": "ce"}]
    assert config.optim.param_groups[0].match == "encoder." and config.optim.param_groups[0].lr == 1e-4
    assert config.name == "my run"


def test_the_loss_defaults_to_the_models_loss() -> None:
    assert load_config(None).loss.terms("dice_ce") == [{"name": "dice_ce", "weight": 1.0}]
    config = load_config(None, ["loss.name=focal", "loss.options.gamma=2"])
    assert config.loss.terms("dice_ce") == [{"name": "focal", "weight": 1.0, "gamma": 2}]


def test_an_integral_float_is_an_integer_but_not_a_fraction() -> None:
    assert load_config(None, ["train.epochs=5.0"]).train.epochs == 5
    with pytest.raises(ConfigError, match=r"^train\.epochs: expected an integer, got 5\.5$"):
        load_config(None, ["train.epochs=5.5"])


UNKNOWN_KEYS = [
    ("train.epoch=5", r"^unknown config key 'train\.epoch'; did you mean 'train\.epochs'\?$"),
    ("trian.epochs=5", r"^unknown config key 'trian'; did you mean 'train'\?$"),
    ("optim.zzz=1", r"^unknown config key 'optim\.zzz'; valid keys under 'optim': name, lr, .*param_groups$"),
    ("data.patch_size.x=1", r"^data\.patch_size: expected a list \(each an integer\) or null, got \{'x'"),
    ("optim.lr.x=1", r"^override optim\.lr\.x: optim\.lr is 0\.1, not a section$"),
    ("augmentation.mirrror=false",
     r"^unknown config key 'augmentation\.mirrror'; did you mean 'augmentation\.mirror'\?$"),
]
WRONG_TYPES = [
    ("train.epochs=abc", r"^train\.epochs: expected an integer, got 'abc'$"),
    ("train.compile=1", r"^train\.compile: expected true or false, got 1$"),
    ("optim.lr=fast", r"^optim\.lr: expected a number, got 'fast'$"),
    ("data.patch_size=64", r"^data\.patch_size: expected a list \(each an integer\) or null, got 64$"),
    ("data.patch_size=[64, x]", r"^data\.patch_size\[1\]: expected an integer, got 'x'$"),
    ("optim.betas=[0.9]", r"^optim\.betas: expected 2 values, got 1"),
    ("model.options=3", r"^model\.options: expected a mapping, got 3$"),
    ("data=5", r"^data: expected a mapping, got 5$"),
]
BAD_VALUES = [
    ("optim.name=sgdd", r"^optim\.name: 'sgdd' is not one of sgd, adam, adamw; did you mean 'sgd'\?$"),
    ("train.amp=fp32", r"^train\.amp: 'fp32' is not one of auto, none, bf16, fp16"),
    ("data.label_mode=multi", r"^data\.label_mode: 'multi' is not one of binary, multiclass, multilabel"),
    ("model.spatial_dims=4", r"^model\.spatial_dims: 4 is not one of 2, 3$"),
    ("train.val_metrics=[dice, hd96]", r"^train\.val_metrics\[1\]: 'hd96' is not one of dice, .*'hd95'"),
    ("schedule.name=cos",
     r"^schedule\.name: 'cos' is not one of constant, cosine, multistep, poly, step, triangular; did you "),
    ("model.name=unett", r"^model\.name: unknown model 'unett'; did you mean unet"),
    ("optim.lr=-1", r"^optim\.lr: must be > 0, got -1\.0$"),
    ("data.val_fraction=1", r"^data\.val_fraction: must be < 1"),
    ("data.patch_size=[0, 64]", r"^data\.patch_size: every value must be >= 1"),
    ("augmentation.mirror.p=2", r"augmentation\.mirror\.p: 2\.0 is outside the allowed interval"),
]


@pytest.mark.parametrize(("override", "message"), UNKNOWN_KEYS + WRONG_TYPES + BAD_VALUES)
def test_errors_name_the_key_and_what_is_allowed(override: str, message: str) -> None:
    """Unknown keys suggest the closest valid ones; wrong types say the expected type; bad values list the
    allowed choices or bounds."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"optim": {"lr": 0.1}}, [override])


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.patch_size=[64,64,64]", "model.spatial_dims=2"], r"^data\.patch_size: .* but the run is 2D$"),
    (["data.fold=5"], r"^data\.fold: 5 must be below data\.folds \(5\)$"),
    (["data.num_classes=3"], r"^data\.num_classes: binary segmentation has 1 output channel"),
    (["data.label_mode=multiclass", "data.num_classes=3", "model.num_classes=2"],
     r"^model\.num_classes: 2 does not match the data's 3 output channels"),
    (["data.label_mapping={WT: [1, 2, 4], TC: [1, 4]}"], r"regions need label_mode multilabel"),
    (["loss.name=dice", "loss.losses=[{name: ce}]"], r"^loss: give either name .* or losses"),
    (["loss.losses=[{weight: 1}]"], r"^loss\.losses\[0\]\.name: expected a loss name"),
    (["train.best_metric=hd95"], r"^train\.best_metric: 'hd95' is not computed; add it to train\.val_"),
    (["optim.param_groups=[{lr: 0.1}]"], r"^optim\.param_groups\[0\]\.match: missing \(required\)$"),
    (["schedule.warmup_epochs=1", "schedule.warmup_iterations=5"], r"^schedule: give warmup_epochs or"),
    (["model.init_from=best.pt", "model.encoder_weights=r18.pth"],
     r"^model\.init_from: give init_from \(the whole model\) or encoder_weights \(the encoder\), not both"),
    (["model.init_skip_mismatched=true"],
     r"^model\.init_skip_mismatched: only applies with model\.init_from"),
    (["model.init_skip_mismatched=yes please"], r"^model\.init_skip_mismatched: expected true or false"),
    (["train.save_every=0"], r"^train\.save_every: must be >= 1, got 0$"),
])
def test_cross_field_rules(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_errors_are_medseg_errors_of_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [1, 2\n")
    cases = [(bad, []), (tmp_path / "missing.yaml", []), (None, ["novalue"]), (None, ["=3"]),
             (None, ["train.epochs=[1,"])]
    for path, overrides in cases:
        with pytest.raises(MedsegError) as info:
            load_config(path, overrides)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"config file .*missing\.yaml not found"):
        load_config(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping of sections, got list"):
        load_config(listed)


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == RunConfig()


def test_save_and_load_round_trip_the_resolved_config(tmp_path: Path) -> None:
    config = load_config(CONFIGS / "unet3d-hippocampus.yaml",
                         ["optim.lr=3e-3", "data.label_mapping={1: 1, 2: 1}", "data.num_classes=2",
                          "data.class_names=[bg, hippocampus]", "augmentation.elastic.enabled=true",
                          "inference.mirror_axes=[0, 2]", "model.options.features=8"])
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary left
    again = load_config(path)
    assert again == config
    assert again.data.label_mapping == {1: 1, 2: 1} and again.inference.mirror_axes == (0, 2)
    plain = config_to_dict(config)
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert json.loads(json.dumps(plain)) == json.loads(json.dumps(saved))
    assert plain["augmentation"]["elastic"]["enabled"] is True and plain["data"]["patch_size"] == [40, 56, 40]


def test_one_section_converts_alone() -> None:
    inference = dataclass_from_dict(InferenceConfig, {"step": 0.25, "postprocess": {"fill_holes": True}},
                                    "inference")
    assert inference.step == 0.25 and inference.postprocess.fill_holes
    assert dataclass_from_dict(InferenceConfig, config_to_dict(inference)) == inference
    with pytest.raises(ConfigError, match=r"^inference\.postprocess\.min_component_voxels: must be >= 0"):
        dataclass_from_dict(InferenceConfig, {"postprocess": {"min_component_voxels": -1}}, "inference")
    classes = dataclass_from_dict(InferenceConfig, {"postprocess": {"largest_component": [1, 2]}})
    assert classes.postprocess.largest_component == (1, 2)


def test_postprocess_config_has_the_fields_of_postprocess_options() -> None:
    from medseg.engine.postprocess import PostprocessOptions

    config = load_config(None, ["inference.postprocess.fill_holes=[1]",
                                "inference.postprocess.connectivity=2"])
    options = PostprocessOptions(**vars(config.inference.postprocess))
    assert options.fill_holes == (1,) and options.connectivity == 2


def test_multi_scale_integers_are_sizes_and_fractions_factors() -> None:
    assert load_config(None, ["train.multi_scale=[224, 256, 352]"]).train.multi_scale == [224, 256, 352]
    factors = load_config(None, ["train.multi_scale=[0.75, 1, 1.25]"]).train.multi_scale
    assert factors == [0.75, 1.0, 1.25] and all(isinstance(f, float) for f in factors)
    assert load_config(None, ["train.multi_scale=null"]).train.multi_scale is None
    for value, message in (("[1, 2]", "read as absolute sizes"), ("[]", "the list is empty"),
                           ("[0.5, 16]", "scale factors must be <= 8"), ("[-0.5, 1]", "must be > 0"),
                           ("[a]", "expected")):
        with pytest.raises(ConfigError, match=rf"^train\.multi_scale: .*{message}"):
            load_config(None, [f"train.multi_scale={value}"])


def test_deep_supervision_resize_reaches_the_wrapper() -> None:
    config = load_config(None, ["loss.name=dice", "loss.deep_supervision=true",
                                "loss.deep_supervision_resize=output",
                                "loss.deep_supervision_weights=[0.5, 0.5]"])
    spec = config.loss.build_spec("binary", "dice")
    assert spec["deep_supervision"] == {"resize": "output", "weights": [0.5, 0.5]}
    loss = build_loss(spec)
    assert loss.resize == "output" and loss.weights == [0.5, 0.5]
    default = load_config(None, ["loss.deep_supervision=true"]).loss.build_spec("binary", "dice")
    assert build_loss(default).resize == "target"
    with pytest.raises(ConfigError, match=r"^loss\.deep_supervision_resize: 'input' is not one of target"):
        load_config(None, ["loss.deep_supervision_resize=input"])


def test_m2snet_preset_is_the_official_recipe() -> None:
    config = load_config(CONFIGS / "m2snet-polyp.yaml")
    assert (config.model.name, config.loss.name) == ("m2snet", "m2snet")
    assert config.loss.options["lossnet_weight"] == 0.1
    assert (config.optim.name, config.optim.nesterov, config.optim.momentum) == ("sgd", True, 0.9)
    assert (config.optim.lr, config.optim.weight_decay, config.data.batch_size) == (0.05, 5e-4, 16)
    assert (config.schedule.name, config.train.epochs) == ("triangular", 50)
    assert config.train.multi_scale == [224, 256, 288, 320, 352] and config.data.resize == (352, 352)
    assert config.augmentation.rotation.degrees == (-10.0, 10.0) and config.augmentation.mirror.axes == (1,)
    assert not config.augmentation.scale.enabled and not config.augmentation.gamma.enabled
    assert config.data.root.endswith("shared/data/kvasir-seg")
    assert {"dice", "iou"} <= set(config.train.val_metrics)


def test_data_layout_requires_that_layout(tmp_path: Path) -> None:
    paired = write_polyp_dataset(tmp_path / "paired", n_cases=2, size=(16, 16))
    assert load_dataset(paired, layout="paired").case_ids == load_dataset(paired).case_ids
    with pytest.raises(ConfigError, match=rf"^data\.layout: 'decathlon', but {re.escape(str(paired))} is a "
                                          r"paired folder$"):
        load_dataset(paired, layout="decathlon")
    listed = tmp_path / "cases.csv"
    listed.write_text("image,label\npaired/images/case_000.png,paired/masks/case_000.png\n")
    assert load_dataset(listed, layout="list").layout == "list"
    with pytest.raises(ConfigError, match=r"^data\.layout: 'paired', but .*cases\.csv is a CSV/JSON list$"):
        load_dataset(listed, layout="paired")
    decathlon = tmp_path / "task"
    (decathlon / "imagesTr").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"^data\.layout: 'list', but .*task is a Decathlon / nnU-Net "):
        load_dataset(decathlon, layout="list")
    with pytest.raises(MedsegError, match=r"^data\.layout must be one of auto, paired, decathlon, list"):
        load_dataset(paired, layout="flat")
    with pytest.raises(ConfigError, match=r"^data\.layout: 'flat' is not one of auto, paired, decathlon"):
        load_config(None, ["data.layout=flat"])


def test_training_checks_data_layout_before_anything_is_written(tmp_path: Path) -> None:
    data = tiny_config(tmp_path)
    data["data"]["layout"] = "decathlon"
    with pytest.raises(ConfigError, match=r"^data\.layout: 'decathlon', but .*data is a paired folder$"):
        train(config_from_dict(data), progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
