"""The config: the one place of every default, JSON round trip, run names."""

import dataclasses
import json

import pytest

from swsl_cli.runner.config import (
    DECLARATIONS,
    HPARAMS,
    KEY_HPARAMS,
    LEGACY_SETTINGS,
    RESUME_OVERRIDES,
    Config,
)


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
    for layer in ("conv", "local", "coordconv"):
        named = Config(layer=layer, centroids_trainable=True).default_run_name(stamp)
        assert named == f"{layer}_f24-48_e10_{stamp}"
    lrlc = Config(layer="lrlc", rank=6, combining="free", head="gap", scaling=3)
    assert lrlc.default_run_name(stamp) == f"lrlc-k6-free_gap_f24-48_e10_{stamp}"
    sharp = Config(scaling=2.5, head="gap", n_epochs=3)
    assert sharp.default_run_name(stamp) == f"sws-g2x2-s2.5_gap_f24-48_e3_{stamp}"
    faces = Config(dataset="celeb_a", label_key="attributes/Male", image_size=32, layer="conv")
    assert faces.default_run_name(stamp) == f"celeb_a_attributes-Male_32px_conv_f24-48_e10_{stamp}"


def test_centroids_argument_prefers_random_centroids():
    assert Config().centroids == (2, 2)
    assert Config(n_centroids=7, centroid_grid=(3, 3)).centroids == 7


def test_resume_overrides_are_fields():
    names = {field.name for field in dataclasses.fields(Config)}
    assert set(RESUME_OVERRIDES) <= names


@pytest.mark.parametrize(
    "values, message",
    [
        (
            dict(layer="foo"),
            "Invalid layer: must be one of sws, conv, local, lrlc, coordconv. Received "
            "layer='foo'.",
        ),
        (dict(lr_schedule="linear"), "Invalid lr_schedule: must be one of cosine, exponential"),
        (dict(n_epochs=0), "Invalid n_epochs: must be >= 1 and <= 100000. Received n_epochs=0."),
        (dict(n_epochs="2"), "Invalid n_epochs: must be an integer. Received n_epochs='2'."),
        (dict(n_epochs=True), "Invalid n_epochs: must be an integer"),
        (dict(learning_rate=0.0), "Invalid learning_rate: must be > 0"),
        (dict(learning_rate=float("nan")), "Invalid learning_rate: must be finite"),
        (dict(ema=1.0), "Invalid ema: must be >= 0 and <= 0.9999"),
        (dict(n_filters=(24,)), "Invalid n_filters: must be a pair of values"),
        (
            dict(n_filters=(24, 0)),
            "Invalid n_filters: must be >= 1 and <= 1024. Received n_filters=0.",
        ),
        (dict(centroid_grid=(2, 2.5)), "Invalid centroid_grid: must be an integer"),
        (dict(quiet="yes"), "Invalid quiet: must be true or false"),
        (dict(run_name="a/b"), "Invalid run_name: must be a plain folder name"),
        (dict(run_name="-x"), "Invalid run_name: must be a plain folder name"),
        (dict(logdir=""), "Invalid logdir: must not be empty"),
        (dict(n_centroids=0), "Invalid n_centroids: must be >= 1"),
        (dict(deterministic="no"), "Expected deterministic to be true, false or None"),
        (dict(head="flatten"), "Invalid head: must be one of dense, gap. Received head='flatten'."),
        (dict(scaling=0.0), "Invalid scaling: must be > 0 and <= 10. Received scaling=0.0."),
        (dict(rank=0), "Invalid rank: must be >= 1 and <= 1024. Received rank=0."),
        (dict(combining="rows"), "Invalid combining: must be one of row_col, free"),
        (dict(label_key=""), "Invalid label_key: must not be empty"),
        (
            dict(image_size=2),
            "Invalid image_size: must be >= 4 and <= 1024. Received image_size=2.",
        ),
        (dict(center_crop=1.5), "Invalid center_crop: must be > 0 and <= 1"),
    ],
)
def test_config_validates_itself_naming_the_setting_and_the_value(values, message):
    with pytest.raises(ValueError) as raised:
        Config(**values)
    assert str(raised.value).startswith(message)


def test_config_normalises_pairs_and_numbers():
    config = Config(n_filters=[8, 16], learning_rate=1, peer_timeout=5)
    assert config.n_filters == (8, 16) and isinstance(config.learning_rate, float)
    assert config == Config(n_filters=(8, 16), learning_rate=1.0, peer_timeout=5.0)


def test_a_saved_run_with_wrong_types_is_refused():
    with pytest.raises(ValueError, match="Invalid n_epochs: must be an integer"):
        Config.from_dict({**Config().to_dict(), "n_epochs": "2"})


def test_the_lists_are_derived_from_the_declarations():
    assert set(RESUME_OVERRIDES) == {
        "logdir", "n_epochs", "data_dir", "run_name", "resume", "quiet", "peer_timeout",
    }  # fmt: skip
    assert set(LEGACY_SETTINGS) == {
        "lr_schedule", "warmup_epochs", "ema", "max_rotation", "max_zoom", "kcp_init", "ema_warmup",
        "head", "scaling", "label_key", "image_size", "center_crop",
    }  # fmt: skip
    assert "n_epochs" in HPARAMS and not {"logdir", "data_dir", "quiet", "deterministic"} & set(
        HPARAMS
    )
    assert KEY_HPARAMS == ("centroid_grid", "n_centroids", "n_filters", "dataset", "layer")
    assert {"head", "scaling", "rank", "combining", "label_key", "image_size"} <= set(HPARAMS)
    assert set(DECLARATIONS) == {f.name for f in dataclasses.fields(Config)} - {"deterministic"}


def test_settings_that_do_not_apply_are_known():
    assert Config().applies("centroid_grid") and not Config(layer="conv").applies("centroid_grid")
    assert not Config(n_centroids=4).applies("centroid_grid")
    assert not Config().applies("lr_decay") and Config(lr_schedule="exponential").applies(
        "lr_decay"
    )
    assert Config(layer="local").applies("n_filters")
    assert Config().applies("scaling") and not Config(layer="lrlc").applies("scaling")
    for name in ("rank", "combining"):
        assert Config(layer="lrlc").applies(name) and not Config().applies(name)
    assert all(Config(layer=layer).applies("head") for layer in ("sws", "conv", "lrlc"))


def test_a_saved_run_from_before_the_comparison_settings_resumes_as_it_trained():
    saved = Config(layer="conv").to_dict()
    for name in ("head", "scaling", "rank", "combining", "label_key", "image_size", "center_crop"):
        del saved[name]
    config = Config.from_dict(json.loads(json.dumps(saved)))
    assert (config.head, config.scaling, config.label_key) == ("dense", 1.0, "label")
    assert (config.image_size, config.center_crop) == (None, None)


def test_default_run_names_name_a_dataset_other_than_mnist():
    stamp = "20260101-000000"
    assert Config(dataset="spatial_mnist").default_run_name(stamp).startswith("spatial_mnist_sws")
    assert Config(dataset="emnist/letters").default_run_name(stamp).startswith("emnist-letters_")
