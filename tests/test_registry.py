"""Registry: names, descriptions, config round trip, entry points and clear errors for bad configs."""

from __future__ import annotations

import pytest
import torch
from algorithm_harness import L10, L20, make_batch, make_state, single_thread

from taxaug.algorithms import (
    Algorithm,
    Engine,
    Event,
    UnknownAlgorithmError,
    create,
    format_algorithms,
    from_config,
    list_algorithms,
    register,
    registered,
    to_config,
)
from taxaug.algorithms import registry as registry_module

_single_thread = pytest.fixture(autouse=True, scope="module")(single_thread)

BUILTIN = {"selective_mixup", "selective_cutmix", "selective_mix", "mixup", "cutmix", "auto_augment",
           "rand_augment", "trivial_augment", "augmix", "random_erasing", "label_smoothing",
           "taxonomy_label_smoothing"}


def test_builtins_listed_with_one_line_descriptions():
    listing = list_algorithms()
    assert set(listing) >= BUILTIN
    assert list(listing) == sorted(listing)
    for name in BUILTIN:
        assert listing[name] and "\n" not in listing[name]
    assert "selective_mixup" in format_algorithms()


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(UnknownAlgorithmError) as info:
        create("selective_mixpu")
    message = str(info.value)
    assert "Did you mean 'selective_mixup'" in message
    assert all(name in message for name in BUILTIN)
    assert isinstance(info.value, KeyError)


def test_unknown_argument_lists_valid_arguments():
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['alfa'\] \('alfa': did you mean 'alpha'\?\)"
                                        r".*Valid arguments: \[.*'group_levels'"):
        create("selective_mixup", alfa=0.4)


@pytest.mark.parametrize(("name", "kwargs", "error", "message"), [
    ("selective_mixup", {"alpha": 0}, ValueError, r"alpha must be > 0"),
    ("selective_mixup", {"alpha": -1.0}, ValueError, r"alpha must be > 0"),
    ("selective_cutmix", {"alpha": 0.0}, ValueError, r"alpha must be > 0"),
    ("selective_mix", {"mixup_alpha": -0.1}, ValueError, r"mixup_alpha must be > 0"),
    ("mixup", {"alpha": 0}, ValueError, r"alpha must be > 0"),
    ("cutmix", {"alpha": "big"}, TypeError, r"alpha must be a number"),
    ("augmix", {"alpha": 0}, ValueError, r"alpha must be > 0"),
    ("selective_mixup", {"prob": 1.5}, ValueError, r"prob must stay within \[0.0, 1.0\]"),
    ("selective_mixup", {"prob": -0.1}, ValueError, r"prob must stay within"),
    ("mixup", {"prob": {"kind": "linear", "start": 1.0, "end": 1.2}}, ValueError, r"reaches \[1.0, 1.2\]"),
    ("selective_mix", {"switch_prob": 2}, ValueError, r"switch_prob must be <= 1"),
    ("random_erasing", {"p": 1.01}, ValueError, r"p must stay within"),
    ("label_smoothing", {"smoothing": -0.5}, ValueError, r"smoothing must stay within"),
    ("auto_augment", {"prob": 3}, ValueError, r"prob must stay within"),
    ("selective_mixup", {"group_levels": [L10, L20, "taxa_L30"], "level_switch_steps": [100, 100]}, ValueError,
     r"level_switch_steps must be strictly increasing, got \[100, 100\]"),
    ("selective_mixup", {"group_levels": [L10, L20, "taxa_L30"], "level_switch_epochs": [5, 2]}, ValueError,
     r"level_switch_epochs must be strictly increasing"),
    ("selective_mixup", {"group_levels": [L10, L20]}, ValueError, r"needs 1 switch point"),
    ("selective_mixup", {"group_levels": [L10], "level_switch_steps": [3]}, ValueError, r"needs 0 switch point"),
    ("selective_mixup", {"group_levels": [L10, L20], "level_switch_steps": [3], "level_switch_epochs": [1]},
     ValueError, "not both"),
    ("selective_mixup", {"min_group_size": 1}, ValueError, r"min_group_size must be >= 2"),
    ("selective_mixup", {"group_levels": []}, TypeError, r"group_levels must be a task name"),
    ("selective_mixup", {"aux_components": [["loc", 0]]}, ValueError, r"positive int width"),
    ("selective_cutmix", {"minmax": [0.8, 0.2]}, ValueError, r"minmax must satisfy"),
    ("augmix", {"severity": 11}, ValueError, r"severity must be in \[1, 10\]"),
    ("augmix", {"augmentation_set": "fancy"}, ValueError, r"augmentation_set must be one of"),
    ("auto_augment", {"policy": "coco"}, ValueError, r"policy must be one of \['imagenet', 'cifar10', 'svhn'\]"),
    ("rand_augment", {"magnitude": 40}, ValueError, r"magnitude must stay within \[0.0, 30\]"),
    ("rand_augment", {"interpolation": "cubic"}, ValueError, r"interpolation must be one of"),
    ("auto_augment", {"fill": "black"}, TypeError, r"fill must be None, a number or a list"),
    ("selective_mixup", {"exclude_null": False, "null_task_keys": [L10]}, ValueError, r"has no effect"),
    ("random_erasing", {"mode": "noise"}, ValueError, r"mode must be one of"),
    ("random_erasing", {"scale": [0.5, 0.1]}, ValueError, r"scale must satisfy"),
    ("image", {}, UnknownAlgorithmError, r"unknown algorithm 'image'"),
])
def test_bad_configs_give_clear_errors(name, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        from_config([{"name": name, **kwargs}])
    if error is not UnknownAlgorithmError:
        assert str(info.value).startswith(f"{name}:"), "the error names the algorithm"


def test_level_not_in_targets_fails_at_first_use_naming_both():
    algorithm = create("selective_mixup", group_levels=["taxa_L99"])
    state = make_state()
    state.batch = make_batch(0)
    engine = Engine([algorithm])
    with pytest.raises(KeyError, match=r"group level 'taxa_L99' is not among the batch targets \['taxa_L10', "
                                       r"'taxa_L20'\]"):
        engine.run(Event.AFTER_DATALOADER, state)


def test_from_config_requires_name():
    with pytest.raises(ValueError, match=r"config \[1\] must be a dict with a 'name' key"):
        from_config([{"name": "mixup"}, {"alpha": 0.2}])
    assert len(from_config({"name": "mixup"})) == 1


def test_to_config_lists_and_schedules_are_plain():
    algorithms = from_config([{"name": "selective_mixup", "prob": {"kind": "linear", "start": 1.0, "end": 0.2,
                                                                   "end_fraction": 0.5}},
                              {"name": "random_erasing", "scale": (0.1, 0.2)}])
    config = to_config(algorithms)
    assert config[0]["prob"] == {"kind": "linear", "start": 1.0, "end": 0.2, "end_fraction": 0.5}
    assert config[1]["scale"] == [0.1, 0.2]
    assert to_config(from_config(config)) == config


def test_register_rejects_collisions_and_non_algorithms():
    with pytest.raises(ValueError, match="already registered"):
        @register("mixup")
        class Other(Algorithm):
            pass
    with pytest.raises(TypeError, match="must decorate an Algorithm subclass"):
        register("thing")(object)
    with pytest.raises(ValueError, match="identifiers"):
        register("two words")


class _PluginAlgorithm(Algorithm):
    """A third-party algorithm loaded through the entry-point group."""

    events = frozenset({Event.BATCH_END})

    def __init__(self, *, strength: float = 1.0) -> None:
        super().__init__()
        self.strength = strength

    def apply(self, event, state):
        pass


class _FakeEntryPoint:
    def __init__(self, name, target, value="plugin_pkg:Algo"):
        self.name, self._target, self.value = name, target, value

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_entry_point_plugins_are_loaded_and_broken_ones_reported(monkeypatch):
    monkeypatch.setattr(registry_module, "_entry_points_loaded", False)
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    monkeypatch.setattr(registry_module, "_entry_point_errors", {})
    calls = []

    def fake_entry_points(*, group):
        calls.append(group)
        return [_FakeEntryPoint("my_plugin", _PluginAlgorithm), _FakeEntryPoint("broken", ImportError("no numpy"))]

    monkeypatch.setattr(registry_module.metadata, "entry_points", fake_entry_points)
    with pytest.warns(UserWarning, match=r"could not load algorithm plugin 'broken'"):
        names = registered()
    assert calls == ["taxaug.algorithms"]
    assert "my_plugin" in names and "broken" not in names
    plugin = create("my_plugin", strength=2.0)
    assert plugin.name == "my_plugin" and to_config(plugin) == {"name": "my_plugin", "strength": 2.0}
    assert list_algorithms()["my_plugin"].startswith("A third-party algorithm")
    with pytest.raises(ImportError, match=r"plugin 'broken' failed to load"):
        create("broken")


def test_created_algorithms_own_distinct_generators():
    a, b = create("mixup"), create("mixup")
    Engine([a, b], seed=0)
    assert not torch.equal(a.generator.get_state(), b.generator.get_state())
