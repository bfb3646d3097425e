"""The config: the one place of every default, JSON round trip, run names."""

import dataclasses
import json

import pytest

from swsl_cli.runner.config import RESUME_OVERRIDES, Config


def test_round_trip_through_json_keeps_tuples():
    config = Config(centroid_grid=(3, 4), n_filters=(8, 16), seed=3, deterministic=True)
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_from_dict_refuses_unknown_settings():
    with pytest.raises(ValueError, match="unknown settings colour, speed"):
        Config.from_dict({"speed": 1, "colour": 2})


def test_a_saved_run_from_before_the_recipe_settings_keeps_its_training():
    # config.json of a run made before --lr_schedule and --ema existed: it trained
    # with an exponential schedule and no averaging, so it must resume that way.
    saved = {k: v for k, v in Config(learning_rate=1e-3).to_dict().items()}
    for name in ("lr_schedule", "warmup_epochs", "ema", "kcp_init"):
        del saved[name]
    config = Config.from_dict(json.loads(json.dumps(saved)))
    assert (config.lr_schedule, config.warmup_epochs, config.ema) == ("exponential", 0.0, 0.0)
    assert config.kcp_init == "independent"
    assert (config.learning_rate, config.lr_decay) == (1e-3, 0.75)
    # A saved value always wins over the legacy one.
    assert Config.from_dict(Config().to_dict()) == Config()


def test_default_run_names_say_what_the_run_is():
    stamp = "20260101-000000"
    assert Config().default_run_name(stamp) == f"sws-g2x2_f24-48_e10_{stamp}"
    trainable = Config(n_centroids=5, centroids_trainable=True, n_epochs=3)
    assert trainable.default_run_name(stamp) == f"sws-r5_trainable_f24-48_e3_{stamp}"
    for layer in ("conv", "local"):
        named = Config(layer=layer, centroids_trainable=True).default_run_name(stamp)
        assert named == f"{layer}_f24-48_e10_{stamp}"


def test_centroids_argument_prefers_random_centroids():
    assert Config().centroids == (2, 2)
    assert Config(n_centroids=7, centroid_grid=(3, 3)).centroids == 7


def test_resume_overrides_are_fields():
    names = {field.name for field in dataclasses.fields(Config)}
    assert set(RESUME_OVERRIDES) <= names
