"""Teachers of soft-label evaluation: frozen classifiers, loaded and checked before any training.

A teacher is named by a spec:

- ``NetworkTeacher(model, state)``: one of the project's networks (``workers.networks``) with
  a state dict in memory, e.g. a trained pool network's final state;
- ``TorchvisionTeacher(arch, weights)``: a torchvision classification architecture, built
  with ``weights=None`` (nothing is ever downloaded), its weights read from a local path or
  a URI (``s3://``, ``gs://``, ``file://``, ...) and loaded with ``torch.load(weights_only=True)``;
  the file holds a state dict or ``{"state_dict": ...}``.

``load_teacher`` refuses, in one line that names the problem and the fix, weights it cannot
read, a state dict that does not fit the architecture (missing or unexpected keys, shapes),
weights for another number of classes, and inputs the architecture cannot take (one forward
of a single image fails, or does not give ``num_classes`` logits).

``teacher_memory`` sizes what a teacher adds to an evaluation: its weights and, per image, the
activations of its forward (an upper estimate, counted as ``workers.network_costs`` counts
the training memory, less the backward's share).
"""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from workers.data.uri import resolve
from workers.network_costs import FP32_BYTES, TRAINING_KEEP_FACTOR, training_bytes_per_image
from workers.networks import build_network, check_network_name

State = Mapping[str, torch.Tensor]
_LISTED = 3  # keys named in a refusal; the rest are counted


@dataclass(frozen=True, eq=False)  # eq=False: tensors do not compare to a bool
class NetworkTeacher:
    model: str  # a workers.networks name
    state: State


@dataclass(frozen=True)
class TorchvisionTeacher:
    arch: str  # a torchvision.models classification name, e.g. "resnet18"
    weights: str  # a local path or a URI of the saved state dict


TeacherSpec = NetworkTeacher | TorchvisionTeacher


@dataclass(frozen=True)
class TeacherMemory:
    weights: int  # bytes of parameters and buffers
    per_image: int  # bytes of one image's activations in a forward (an upper estimate)

    def bytes(self, batch: int) -> int:
        """The teacher's memory when it labels ``batch`` images at once."""
        return self.weights + batch * self.per_image


def load_teacher(spec: TeacherSpec, *, channels: int, num_classes: int, im_size: tuple[int, int],
                 device: torch.device | str = "cpu") -> nn.Module:
    """The checked teacher on ``device``, in eval mode, its parameters frozen."""
    net = architecture(spec, channels=channels, num_classes=num_classes, im_size=im_size)
    state = spec.state if isinstance(spec, NetworkTeacher) else read_state(spec.weights)
    check_fits(net, state, spec, num_classes)
    net.load_state_dict(state)
    net.eval().requires_grad_(False)
    check_forward(net, _name(spec), channels, num_classes, im_size)
    return net.to(device)


def teacher_memory(spec: TeacherSpec, *, channels: int, num_classes: int, im_size: tuple[int, int]) -> TeacherMemory:
    """What ``spec``'s teacher takes, from its architecture alone (no weights are read)."""
    shape = (channels, *im_size)
    if isinstance(spec, NetworkTeacher):  # the project's own count of its networks
        net = build_network(spec.model, channels, num_classes, im_size)
        per_image = training_bytes_per_image(spec.model, shape, num_classes) // TRAINING_KEEP_FACTOR
        return TeacherMemory(_weight_bytes(net), per_image)
    return inference_memory(architecture(spec, channels=channels, num_classes=num_classes, im_size=im_size), shape)


def inference_memory(net: nn.Module, shape: tuple[int, int, int]) -> TeacherMemory:
    """The memory of ``net``'s forward, measured by one forward of a single image.

    Every leaf layer's output is counted as if all stayed alive to the end (a network may keep
    feature maps for skips or concatenations); a forward without gradients frees most early."""
    outputs = 0

    def count(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal outputs
        outputs += out.numel() if isinstance(out, torch.Tensor) else 0

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, *shape, device=_device_of(net)))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return TeacherMemory(_weight_bytes(net), FP32_BYTES * (shape[0] * shape[1] * shape[2] + outputs))


def architecture(spec: TeacherSpec, *, channels: int, num_classes: int, im_size: tuple[int, int]) -> nn.Module:
    """The teacher's untrained network on the CPU (torchvision's with ``weights=None``)."""
    if isinstance(spec, NetworkTeacher):
        check_network_name(spec.model)
        try:
            return build_network(spec.model, channels, num_classes, tuple(im_size))
        except ValueError as err:
            raise ValueError(f"teacher {spec.model} cannot take {channels}x{im_size[0]}x{im_size[1]} images: "
                             f"{err}") from None
    import torchvision.models  # only torchvision teachers need it

    names = torchvision.models.list_models(module=torchvision.models)  # the classification models
    if spec.arch not in names:
        near = difflib.get_close_matches(spec.arch, names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown torchvision classification model {spec.arch!r}{hint}: use a name from "
                         "torchvision.models.list_models(module=torchvision.models)")
    return torchvision.models.get_model(spec.arch, weights=None, num_classes=num_classes)


def read_state(location: str) -> State:
    """The state dict saved at ``location`` (a local path or a URI)."""
    try:
        filesystem, path = resolve(location)
        with filesystem.open_input_file(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(f"teacher weights {location}: no such file; give the path or URI of a saved "
                         "state dict") from None
    except (OSError, ValueError) as err:  # pyarrow reports a bad URI as a ValueError
        raise ValueError(f"teacher weights {location} cannot be read ({_first_line(err)}); give the path or URI "
                         "of a readable state dict file") from None
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch.load raises many kinds for a foreign file
        raise ValueError(f"teacher weights {location} are not a torch file of tensors; "
                         "save them with torch.save(model.state_dict(), path)") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"teacher weights {location} hold a {type(loaded).__name__}, not a state dict of "
                         "tensors; save model.state_dict() (alone or as {'state_dict': ...})")
    return loaded


def check_fits(net: nn.Module, state: State, spec: TeacherSpec, num_classes: int) -> None:
    """Refuse a state dict that ``net.load_state_dict`` would not take, saying why in one line."""
    name = _name(spec)
    where = f"the weights given for teacher {name}" if isinstance(spec, NetworkTeacher) \
        else f"teacher weights {spec.weights}"
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        hint = " (saved from a DataParallel wrapper? save model.module.state_dict())" \
            if unexpected and all(k.startswith("module.") for k in unexpected) else ""
        raise ValueError(f"{where} do not fit {name}: missing keys {_listed(missing)}, unexpected "
                         f"keys {_listed(unexpected)}{hint}; give weights saved from this architecture")
    for key, want in expected.items():
        got = state[key].shape
        if got == want.shape:
            continue
        if len(got) == want.dim() and want.shape[0] == num_classes and got[1:] == want.shape[1:]:
            raise ValueError(f"{where} are for {got[0]} classes ({key} {list(got)}), the data has {num_classes}; "
                             f"use a teacher trained on these {num_classes} classes")
        raise ValueError(f"{where} do not fit {name} for these images: {key} is {list(got)} in the "
                         f"weights, {list(want.shape)} here; give weights of this architecture trained at this "
                         "channel count and image size")


def check_forward(net: nn.Module, name: str, channels: int, num_classes: int, im_size: tuple[int, int]) -> None:
    """One forward of a blank image: the inputs fit and the output is ``num_classes`` logits."""
    shape = [1, channels, *im_size]
    try:
        with torch.no_grad():
            out = net(torch.zeros(shape, device=_device_of(net)))
    except Exception as err:  # noqa: BLE001 - any layer may refuse the input
        raise ValueError(f"teacher {name} cannot take inputs of shape {shape} ({_first_line(err)}); use an "
                         "architecture made for these images, or images it takes") from None
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != [1, num_classes]:
        raise ValueError(f"teacher {name} gives {got} for one image, not [1, {num_classes}] logits; use a "
                         f"classifier of these {num_classes} classes")


def _name(spec: TeacherSpec) -> str:
    return spec.model if isinstance(spec, NetworkTeacher) else spec.arch


def _device_of(net: nn.Module) -> torch.device:
    first = next(net.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _weight_bytes(net: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


def _listed(keys: list[str]) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
