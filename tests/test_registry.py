from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

from distillbench import UserError, get_method, list_methods, list_tasks
from distillbench.method import method_registry
from distillbench.registry import Registry


def test_builtin_methods_and_tasks_are_discovered():
    assert {"finetune", "kd", "lwd", "minilm", "minilmv2", "ted"} <= set(list_methods())
    assert {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"} <= set(list_tasks())
    assert list_methods("minilm*") == ["minilm", "minilmv2"]


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(UserError, match=r"unknown method 'tde'\. Did you mean 'ted'\? Known methods: .*kd"):
        get_method("tde")


def test_duplicate_registration_is_an_error():
    registry: Registry[type] = Registry("thing", "distillbench.methods", "distillbench.none")

    @registry.register("x")
    class First:
        pass

    with pytest.raises(UserError, match="already registered"):

        @registry.register("x")
        class Second:
            pass


def test_third_party_method_plugs_in_through_the_entry_point_group(tmp_path, monkeypatch):
    (tmp_path / "toy_plugin.py").write_text(
        "from distillbench import Method, register_method\n"
        "@register_method('toy')\n"
        "class Toy(Method):\n"
        "    '''A toy plug-in method.'''\n"
        "    def loss(self, student, teacher, batch):\n"
        "        return {'task': student.loss}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint(name="toy", value="toy_plugin", group="distillbench.methods")
    monkeypatch.setattr(
        "distillbench.registry.entry_points", lambda group: [point] if group == "distillbench.methods" else []
    )
    monkeypatch.setattr(method_registry, "_discovered", False)
    try:
        assert get_method("toy").summary() == "A toy plug-in method."
        assert "toy" in list_methods()
    finally:
        method_registry._entries.pop("toy", None)
        sys.modules.pop("toy_plugin", None)


def test_a_method_that_needs_an_internal_the_harness_cannot_expose_is_refused_at_definition():
    from distillbench.errors import UserError
    from distillbench.method import Method

    with pytest.raises(UserError, match=r"needs: unknown \['logits_of_layer_7'\]"):

        class Greedy(Method):
            needs = frozenset({"hidden_states", "logits_of_layer_7"})
