"""Every registered model builds small, runs, and comes back from disk giving the same output.

Generators go through `save_generator` / `load_generator` (the checkpoint JSON must rebuild them, kwargs
included); other models through a safetensors state-dict round trip. A model registered without an entry in
`EXAMPLES` fails `test_every_registered_model_has_an_example`: add a small build and input for it there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn

import linedraw.models as models
from linedraw.checkpoint import load_generator, save_generator
from linedraw.models import create_model, list_models


@dataclass
class Example:
    """Small constructor kwargs (one dict per variant worth checking), an input builder and how to call."""

    kwargs: list[dict[str, Any]]
    inputs: Callable[[], tuple]
    generator: bool = False
    call: Callable[[nn.Module, tuple], torch.Tensor] = field(default=lambda model, args: model(*args))


def _image(channels: int, size: int = 16) -> Callable[[], tuple]:
    return lambda: (torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0)),)


def _features() -> tuple:
    g = torch.Generator().manual_seed(0)
    return ([torch.rand(2, 4, 8, 8, generator=g), torch.rand(2, 8, 4, 4, generator=g)],)


EXAMPLES: dict[str, Example] = {
    "resnet_generator": Example([{"ngf": 8, "n_blocks": 1},
                                 {"in_channels": 1, "out_channels": 3, "ngf": 8, "n_blocks": 1, "upsample": "resize"}],
                                _image(3), generator=True,
                                call=lambda model, args: model(args[0][:, : model.in_channels])),
    "resnet_generator_resize": Example([{"ngf": 8, "n_blocks": 1}], _image(3), generator=True),
    "fast_generator": Example([{"width": 8, "n_blocks": 1, "n_blocks_half": 1}], _image(3), generator=True),
    "fast_generator_w24_b8": Example([{}], _image(3), generator=True),
    "patch_discriminator": Example([{"in_channels": 1, "ndf": 8, "n_layers": 2}], _image(1, 32)),
    "geometry_head": Example([{"in_channels": [4, 8], "width": 8}], _features,
                             call=lambda model, args: model(args[0], size=(16, 16))),
}


def roundtrip(name: str, kwargs: dict[str, Any], tmp_path) -> None:
    """Build `name` small, run it, save and load it back, and assert the outputs are equal."""
    example = EXAMPLES[name]
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    inputs = example.inputs()
    with torch.no_grad():
        expected = example.call(model, inputs)
    assert torch.isfinite(expected).all(), f"{name}: non-finite output"
    if example.generator:
        save_generator(model, tmp_path / name, {"model": name, "kwargs": kwargs})
        loaded, config = load_generator(tmp_path / f"{name}.safetensors")
        assert config["model"] == name and config["kwargs"] == kwargs
    else:
        from safetensors.torch import load, save

        data = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
        torch.manual_seed(1)  # other initial weights: only the loaded ones may decide the output
        loaded = create_model(name, **kwargs).eval()
        loaded.load_state_dict(load(data))
    with torch.no_grad():
        got = example.call(loaded, inputs)
    assert got.shape == expected.shape, f"{name}: output shape changed after loading"
    assert torch.equal(got, expected), f"{name}({kwargs}): output differs after the save/load round trip"


def test_every_registered_model_has_an_example():
    missing = sorted(set(list_models()) - set(EXAMPLES))
    assert not missing, f"registered models without an example in tests/test_registry.py: {missing}"
    assert not sorted(set(EXAMPLES) - set(list_models())), "examples for models that are no longer registered"


CASES = [(name, kwargs) for name in list_models() if name in EXAMPLES for kwargs in EXAMPLES[name].kwargs]


@pytest.mark.parametrize("name,kwargs", CASES,
                         ids=[f"{n}-{','.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CASES])
def test_registered_model_builds_runs_and_roundtrips(name, kwargs, tmp_path):
    roundtrip(name, kwargs, tmp_path)


class _ForgetsItsScale(nn.Module):
    """A broken model: part of what decides its output is not in its state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.register_buffer("scale", torch.rand(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale


def _cannot_build(**kwargs) -> nn.Module:
    raise ValueError("this model cannot be built")


@pytest.mark.parametrize("factory,error", [(_ForgetsItsScale, "differs after the save/load"),
                                           (_cannot_build, "cannot be built")])
def test_the_roundtrip_check_fails_for_broken_models(factory, error, tmp_path, monkeypatch):
    monkeypatch.setitem(models._REGISTRY, "broken_model", factory)
    monkeypatch.setitem(EXAMPLES, "broken_model", Example([{}], _image(1)))
    assert "broken_model" in list_models()
    with pytest.raises((AssertionError, ValueError), match=error):
        roundtrip("broken_model", {}, tmp_path)
