import pytest

from sonossl.config import EvaluateConfig, PretrainConfig, build_config, read_config_file, read_preset
from sonossl.errors import SonosslError


def test_unknown_key_is_named_with_the_valid_ones(tmp_path):
    (tmp_path / "c.yaml").write_text("batch_sise: 32\n")
    with pytest.raises(SonosslError, match=r"c\.yaml: unknown key 'batch_sise'; valid keys: .*batch_size"):
        build_config(PretrainConfig, read_config_file(tmp_path / "c.yaml"), source=str(tmp_path / "c.yaml"))


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(SonosslError, match=r"image_size: .*greater than 0"):
        build_config(PretrainConfig, {"image_size": 0})
    with pytest.raises(SonosslError, match=r"epochs: .*integer"):
        build_config(PretrainConfig, {"epochs": "many"})
    with pytest.raises(SonosslError, match=r"fraction 150 outside \(0, 100\]"):
        build_config(EvaluateConfig, {"fractions": [1, 150]})


def test_later_layers_win_and_none_means_unset():
    cfg = build_config(PretrainConfig, {"batch_size": 16, "epochs": 3}, {"batch_size": 8, "epochs": None})
    assert (cfg.batch_size, cfg.epochs) == (8, 3)


def test_a_partial_nested_block_keeps_the_rest_of_the_preset():
    """A config file's ``method_options: {lambd: ...}`` over the cpu preset changes lambd only: the
    preset's 1024-wide projector stays (replacing the block would fall back to the 8192x3
    default, 7x slower on CPU)."""
    cfg = build_config(PretrainConfig, read_preset("cpu", "barlowtwins"), {"method": "barlowtwins"},
                       {"method_options": {"lambd": 0.01}, "augment": {"view1": {"blur_p": 0.5}}})
    assert cfg.method_options == {"projector": [1024, 1024, 1024], "lambd": 0.01}
    assert cfg.augment.view1.blur_p == 0.5 and cfg.augment.view2 == PretrainConfig().augment.view2
    lists = build_config(PretrainConfig, {"method_options": {"projector": [64, 64, 64]}},
                         {"method_options": {"projector": [32]}})
    assert lists.method_options["projector"] == [32]  # a list is replaced, not merged


def test_bool_strings_are_not_silently_true():
    with pytest.raises(SonosslError, match="augment"):
        build_config(EvaluateConfig, {"augment": "maybe"})


def test_presets_validate_and_unknown_preset_lists_names(tmp_path):
    for name in ("cpu", "paper"):
        cfg = build_config(PretrainConfig, read_preset(name, "barlowtwins"))
        assert cfg.method_options["lambd"] == 0.0051
        assert "method_options" not in read_preset(name, "no-such-method")
    with pytest.raises(SonosslError, match="unknown preset 'gpu'; expected one of: cpu, paper"):
        read_preset("gpu")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(SonosslError, match="expected a mapping"):
        read_config_file(tmp_path / "bad.yaml")
