import pytest

from paratune import ParaConfig


def test_defaults():
    config = ParaConfig()
    assert (config.r, config.targets, config.pooling, config.activation) == (16, ["q", "v", "up"], "attention", "rational")
    assert config.peft_type == "PARA"


def test_targets_are_canonically_ordered_and_accept_a_string():
    assert ParaConfig(targets=["up", "q"]).targets == ["q", "up"]
    assert ParaConfig(targets="v, down").targets == ["v", "down"]


@pytest.mark.parametrize(
    "kwargs, field, allowed",
    [
        ({"r": 0}, "r", "positive integer"),
        ({"r": 2.5}, "r", "positive integer"),
        ({"targets": ["q", "x"]}, "targets", "'gate', 'down'"),
        ({"targets": []}, "targets", "subset"),
        ({"targets": ["q", "q"]}, "targets", "duplicates"),
        ({"pooling": "sum"}, "pooling", "'attention', 'mean', 'max', 'last'"),
        ({"activation": "tanh"}, "activation", "'rational', 'gelu', 'relu', 'silu', 'identity'"),
        ({"dropout": 1.5}, "dropout", "[0, 1)"),
        ({"layers_to_transform": [-1]}, "layers_to_transform", "indices"),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(kwargs, field, allowed):
    with pytest.raises(ValueError) as error:
        ParaConfig(**kwargs)
    assert f"ParaConfig.{field}" in str(error.value)
    assert allowed in str(error.value)


def test_json_round_trip(tmp_path):
    config = ParaConfig(r=8, targets=["k", "up"], pooling="max", activation="gelu", layers_to_transform=[1, 0])
    config.save_pretrained(tmp_path)
    loaded = ParaConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.layers_to_transform == [0, 1]
