"""TrainConfig and the emanet train command line generated from it."""

import argparse
from dataclasses import fields

from emanet.training.config import TrainConfig, build_parser, config_from_args


def test_options_take_their_defaults_from_train_config():
    required = ["--preset", "p", "--data", "d", "--work-dir", "w"]
    assert config_from_args(build_parser().parse_args(required)) == TrainConfig(
        preset="p", data_root="d", work_dir="w"
    )
    options = ["--pretrained", "none", "--workers", "3", "--scale", "10", "5", "--compile"]
    options += ["--no-recompute-norm-relu"]
    config = config_from_args(build_parser().parse_args([*required, *options]))
    assert config.pretrained == "none" and config.num_workers == 3 and config.compile
    assert not config.recompute_norm_relu and TrainConfig("p", "d", "w").recompute_norm_relu
    assert config.train_scale == (10, 5)


def test_every_field_is_one_option_with_its_documentation():
    parser = build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert set(actions) == {f.name for f in fields(TrainConfig)}
    for f in fields(TrainConfig):
        assert f.metadata["help"].split(" (default")[0] in actions[f.name].help
    # booleans: on by default -> --x/--no-x; off by default -> a plain switch
    assert isinstance(actions["channels_last"], argparse.BooleanOptionalAction)
    assert actions["resume"].nargs == 0 and actions["resume"].default is False
    assert actions["crop_size"].nargs == 2 and actions["crop_size"].type is int
    assert actions["ratio_range"].type is float


def test_the_command_line_of_the_model_card_still_parses():
    card = (
        "--preset emanet_r18-d8_toycity --data /data/toycity --work-dir /runs/bundled "
        "--iters 6000 --batch-size 8 --lr 0.02 --crop-size 128 256 --scale 512 256 "
        "--checkpoint-interval 500 --val-interval 1000 --log-interval 20 --workers 1 --seed 0 "
        "--snapshot-bases --precision bf16 --channels-last"
    )
    config = config_from_args(build_parser().parse_args(card.split()))
    assert config == TrainConfig(
        preset="emanet_r18-d8_toycity",
        data_root="/data/toycity",
        work_dir="/runs/bundled",
        iters=6000,
        batch_size=8,
        lr=0.02,
        crop_size=(128, 256),
        train_scale=(512, 256),
        checkpoint_interval=500,
        val_interval=1000,
        log_interval=20,
        num_workers=1,
        seed=0,
        snapshot_bases=True,
        precision="bf16",
        channels_last=True,
    )
