"""TrainConfig: flags generated from field metadata, the args -> config mapping, and the checks."""

import argparse
import dataclasses
import typing

import pytest

from deeprank import cli
from deeprank.training import TrainConfig, train
from deeprank.training.config import add_train_arguments, check_config, cli_fields, config_from_args


def _parser():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser


def _other_value(f, annotation):
    """A value of field ``f`` that differs from its default and that its flag can express."""
    meta = f.metadata
    if "const" in meta:
        return meta["const"]
    if "choices" in meta:
        return next(c for c in meta["choices"] if c != f.default)
    kind = next(a for a in typing.get_args(annotation) or (annotation,) if a is not type(None))
    if kind is bool:
        return True
    if kind is int:
        return (f.default or 0) + 7
    if kind is float:
        return 0.375 if f.default != 0.375 else 0.625
    return f"{f.name}-value"


def _argv(f, value):
    flag = f.metadata["flag"]
    flag = flag[-1] if isinstance(flag, tuple) else flag
    if not flag.startswith("-"):
        return [str(value)]
    if "const" in f.metadata or value is True:
        return [flag]
    return [flag, str(value)]


def test_every_field_has_a_flag_or_says_why_it_is_api_only():
    for f in dataclasses.fields(TrainConfig):
        assert ("flag" in f.metadata) != ("api_only" in f.metadata), f.name
        reason = f.metadata.get("help") or f.metadata.get("api_only")
        assert isinstance(reason, str) and len(reason) > 10, f.name
    api_only = [f.name for f in dataclasses.fields(TrainConfig) if "api_only" in f.metadata]
    assert api_only == ["model_options"]  # the docstring names it: keep the two in step
    assert "model_options" in TrainConfig.__doc__
    assert "workers" not in {f.name for f in dataclasses.fields(TrainConfig)}  # never read, removed


def test_defaults_of_the_flags_are_the_dataclass_defaults():
    assert config_from_args(_parser().parse_args([])) == TrainConfig()


def test_every_flag_round_trips_through_argparse_into_its_field():
    hints = typing.get_type_hints(TrainConfig)
    parser = _parser()
    fields = cli_fields()
    assert len(fields) == len(dataclasses.fields(TrainConfig)) - 1
    for f in fields:
        value = _other_value(f, hints[f.name])
        assert value != f.default, f.name
        config = config_from_args(parser.parse_args(_argv(f, value)))
        assert getattr(config, f.name) == value, f.name
        assert type(getattr(config, f.name)) is type(value), f.name
        # and nothing else moved
        assert dataclasses.replace(config, **{f.name: f.default}) == TrainConfig(), f.name


def test_flag_names_users_rely_on_map_to_their_fields():
    args = _parser().parse_args(
        [
            "imgs/",
            "--max-steps",
            "7",
            "--lambda",
            "0.01",
            "--out-of-class",
            "0.3",
            "--device",
            "cpu",
            "--resume",
            "--single-scale",
            "--mining",
            "semi-hard",
            "--channels",
            "1",
            "-o",
            "runs/x",
            "--unlabelled",
        ]
    )
    config = config_from_args(args)
    assert config.data == "imgs/" and config.max_steps == 7 and config.weight_decay_lambda == 0.01
    assert config.out_of_class_fraction == 0.3 and config.resume and config.single_scale
    assert config.mining == "semi-hard" and config.device == "cpu" and config.in_channels == 1
    assert config.output == "runs/x" and config.data_kind == "unlabelled"


def test_bad_flag_values_are_rejected_by_the_parser(capsys):
    for argv in (["--channels", "2"], ["--mining", "hardest"], ["--max-steps", "many"], ["--preset", "big"]):
        with pytest.raises(SystemExit) as exc:
            _parser().parse_args(argv)
        assert exc.value.code == 2, argv
    assert "invalid choice" in capsys.readouterr().err


def test_help_lists_each_flag_with_its_default():
    text = _parser().format_help()
    for f in cli_fields():
        flag = f.metadata["flag"]
        assert (flag[-1] if isinstance(flag, tuple) else flag) in text, f.name
    assert "learning rate (default 0.05)" in text
    assert "(default: the preset's)" in text and "(default None)" not in text


def test_the_train_command_has_no_progress_and_maps_to_a_config():
    args = cli.build_parser().parse_args(["train", "imgs/", "--no-progress", "--lr", "0.1"])
    assert args.no_progress is True and args.func is cli.cmd_train
    assert config_from_args(args) == TrainConfig(data="imgs/", lr=0.1)
    assert cli.build_parser().parse_args(["train"]).no_progress is False


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(lr=0), "lr must be > 0"),
        (dict(margin=-1.0), "margin must be > 0"),
        (dict(momentum=-0.1), "momentum must be >= 0"),
        (dict(schedule="step"), "schedule must be"),
        (dict(mining="hardest"), "mining must be one of"),
        (dict(max_steps=-1), "max_steps must be > 0 when given"),
        (dict(time_budget=0.0), "time_budget must be > 0 when given"),
        (dict(max_shift=-1), "max_shift must be an int >= 0 or None"),
        (dict(max_shift=1.5), "max_shift must be an int >= 0 or None"),
        (dict(max_shift=True), "max_shift must be an int >= 0 or None"),
    ],
)
def test_bad_config_values_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        check_config(TrainConfig(**bad))


def test_train_checks_the_config_before_building_anything(tmp_path):
    with pytest.raises(ValueError, match="lr must be > 0"):
        train(TrainConfig(output=str(tmp_path / "out"), lr=0, device="cpu"), progress=False)
    assert not (tmp_path / "out").exists()
    check_config(TrainConfig())  # the defaults pass
