"""One flag vocabulary across the CLIs: the trainer and prepare_latents take the names sample/convert/evaluate use,
and keep their old (official) names as aliases."""

import pytest

from .train_fixtures import training_module


@pytest.mark.parametrize("flag", ["--preset", "--model"])
def test_trainer_preset_flag_and_its_official_alias(flag):
    train_repa = training_module("train_repa")
    args = train_repa.parse_args(["--train_data_dir", "images", flag, "SiT-B/2"])
    assert args.model == "SiT-B/2"


@pytest.mark.parametrize("flag", ["--dataset_split", "--split"])
def test_prepare_latents_split_flag_and_its_old_alias(flag):
    prepare_latents = training_module("prepare_latents")
    args = prepare_latents.parse_args(["--dataset_name", "data", "--output_dir", "out", "--vae", "none", flag, "test"])
    assert args.split == "test"
