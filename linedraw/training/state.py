"""A run's resumable state on disk, written by us and read back without unpickling anything.

A state folder holds `run.json` (format, position, what was saved), `nets.safetensors` (every trainable network,
keys `<net>.<parameter>`), `training.pt` (optimizer, scheduler and image-pool state dicts: tensors, numbers and
containers only, read with `torch.load(weights_only=True)`) and `rng_<rank>.safetensors` (each process's torch /
CUDA RNG states, with Python's and NumPy's as JSON in its metadata).

Folders written by `accelerate.save_state` (linedraw 0.1: `model*.safetensors`, `optimizer*.bin`,
`custom_checkpoint_*.pkl`, `random_states_*.pkl`) still resume when every file holds only plain tensors and
numbers; a file that would need real unpickling (which can run code) is refused, naming it.
"""
from __future__ import annotations

import json
import logging
import pickle
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from linedraw.checkpoint import CheckpointError
from linedraw.images import write_atomic, write_atomic_path

log = logging.getLogger(__name__)

FORMAT = "linedraw-run-state/1"
RUN_FILE = "run.json"
NETS_FILE = "nets.safetensors"
TRAINING_FILE = "training.pt"


class RunStateError(CheckpointError):
    """A saved run state that cannot be resumed (missing, damaged, unsafe or from another setup); names the file."""


@dataclass
class RunState:
    """Where the loop is: optimizer steps done, the epoch, and batches done within it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def state_dict(self) -> dict[str, int]:
        """The three counters (JSON-ready)."""
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counters; a missing one is 0 (distillation's state holds only `step`)."""
        self.step, self.epoch, self.batch_in_epoch = (int(state.get(k, 0)) for k in ("step", "epoch", "batch_in_epoch"))


def rng_file(rank: int) -> str:
    """Name of process `rank`'s RNG file in a state folder."""
    return f"rng_{rank}.safetensors"


def _numpy_globals() -> list:
    """What a pickled NumPy array needs (plain numbers, as accelerate's RNG files hold): no code, no other objects."""
    import codecs

    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, codecs.encode]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed.append(dtypes.UInt32DType)
    return allowed


def load_torch(path: str | Path, numpy_arrays: bool = False) -> Any:
    """`torch.load(path, weights_only=True)`: tensors, numbers, strings and containers only (plus NumPy arrays with
    `numpy_arrays`); a file holding anything else is refused with a `RunStateError` naming it, never unpickled."""
    try:
        if numpy_arrays:
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line), "")
        raise RunStateError(f"{path}: refused to load: it holds objects other than tensors and numbers, and "
                            f"unpickling them could run code{f' ({detail})' if detail else ''}") from None
    except FileNotFoundError:
        raise RunStateError(f"{path}: missing from the saved run state") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise RunStateError(f"{path}: cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__})") \
            from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise RunStateError(f"{path}: missing from the saved run state")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) on damaged files
        raise RunStateError(f"{path}: cannot be read ({str(err).splitlines()[0] if str(err) else err!r})") from None


# ------------------------------------------------------------------------------------------------- RNG


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's RNG states: torch (CPU, every CUDA device) as tensors, Python and NumPy as JSON strings."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": json.dumps([version, list(internal), gauss]),
                     "numpy": json.dumps([name, keys.tolist(), pos, has_gauss, cached])}


def restore_rng(tensors: Mapping[str, torch.Tensor], python: Sequence | None, numpy: Sequence | None) -> None:
    """Set the RNG states `capture_rng` returned (Python and NumPy as decoded lists)."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if python is not None:
        version, internal, gauss = python
        random.setstate((version, tuple(internal), gauss))
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ------------------------------------------------------------------------------------------------- save / load


def save_state(directory: str | Path, state: RunState, nets: Mapping[str, nn.Module],
               stateful: Mapping[str, Any], rank: int = 0, main: bool = True) -> None:
    """Write the run state into `directory`: every process its RNG file, the main process everything else.

    `nets` are plain (unwrapped) modules; `stateful` are optimizers, schedulers and other objects with
    `state_dict()` whose states hold tensors, numbers and containers only."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors, metadata = capture_rng()
    write_atomic_path(directory / rng_file(rank), lambda tmp: save_file(
        {k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata))
    if not main:
        return
    weights = {f"{name}.{k}": v.detach().to("cpu").contiguous() for name, net in nets.items()
               for k, v in net.state_dict().items()}
    write_atomic_path(directory / NETS_FILE, lambda tmp: save_file(weights, tmp))
    states = {name: obj.state_dict() for name, obj in stateful.items()}
    write_atomic_path(directory / TRAINING_FILE, lambda tmp: torch.save(states, tmp))
    run = {"format": FORMAT, **state.state_dict(), "nets": list(nets), "stateful": list(stateful)}
    write_atomic(directory / RUN_FILE, lambda handle: handle.write((json.dumps(run, indent=2) + "\n").encode()))


def load_state(directory: str | Path, state: RunState, nets: Mapping[str, nn.Module], stateful: Mapping[str, Any],
               rank: int = 0, legacy_stateful: Sequence[str] = ()) -> None:
    """Restore what `save_state` wrote (or an accelerate state folder, see the module docstring) into the objects.

    `legacy_stateful` names the `stateful` objects an accelerate folder holds as `custom_checkpoint_1.pkl`,
    `_2`, ... (`_0` is the run state); optimizers are its `optimizer*.bin` in the order of `stateful`."""
    directory = Path(directory)
    if not (directory / RUN_FILE).is_file() and (directory / "custom_checkpoint_0.pkl").is_file():
        _load_accelerate_state(directory, state, nets, stateful, rank, legacy_stateful)
        return
    run_path = directory / RUN_FILE
    try:
        run = json.loads(run_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunStateError(f"{run_path}: missing: {directory} is not a saved run state") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunStateError(f"{run_path}: cannot be read ({err})") from None
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        raise RunStateError(f"{run_path}: not a {FORMAT} file")
    for key, expected in (("nets", list(nets)), ("stateful", list(stateful))):
        if run.get(key) != expected:
            raise RunStateError(f"{run_path}: saved {key} {run.get(key)}, but this run has {expected} (other "
                                "settings); resume with the same config, or start over in a new output_dir")
    weights = _load_safetensors(directory / NETS_FILE)
    for name, net in nets.items():
        prefix = f"{name}."
        _load_net(net, {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, directory / NETS_FILE)
    states = load_torch(directory / TRAINING_FILE)
    for name, obj in stateful.items():
        _load_into(obj, states.get(name) if isinstance(states, dict) else None, directory / TRAINING_FILE, name)
    state.load_state_dict(run)
    rng_path = directory / rng_file(rank)
    if rng_path.is_file():
        from safetensors import safe_open

        metadata = {}
        with safe_open(str(rng_path), "pt") as handle:
            metadata = handle.metadata() or {}
        restore_rng(_load_safetensors(rng_path), *(json.loads(metadata[k]) if k in metadata else None
                                                   for k in ("python", "numpy")))
    else:
        log.warning("%s: missing (saved with fewer processes?); RNG states not restored", rng_path)


def _load_net(net: nn.Module, weights: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise RunStateError(f"{path}: weights do not fit this run's networks ({str(err).splitlines()[0]})") from None


def _load_into(obj: Any, saved: Any, path: Path, name: str) -> None:
    if saved is None:
        raise RunStateError(f"{path}: holds no state for {name}")
    try:
        obj.load_state_dict(saved)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise RunStateError(f"{path}: the {name} state does not fit this run ({err})") from None


def _load_accelerate_state(directory: Path, state: RunState, nets: Mapping[str, nn.Module],
                           stateful: Mapping[str, Any], rank: int, legacy_stateful: Sequence[str]) -> None:
    """Read a folder written by `accelerate.save_state` with weights-only loads (see the module docstring)."""
    path = directory / "custom_checkpoint_0.pkl"
    saved = load_torch(path)
    if not isinstance(saved, dict) or "step" not in saved:
        raise RunStateError(f"{path}: holds no step counter")
    for i, (name, net) in enumerate(nets.items()):
        suffix = f"_{i}" if i else ""
        path = directory / f"model{suffix}.safetensors"
        weights = _load_safetensors(path) if path.is_file() or not (directory / f"pytorch_model{suffix}.bin").is_file() \
            else load_torch(path := directory / f"pytorch_model{suffix}.bin")
        _load_net(net, weights, path)
    optimizers = [name for name, obj in stateful.items() if hasattr(obj, "param_groups")]
    for i, name in enumerate(optimizers):
        path = directory / (f"optimizer_{i}.bin" if i else "optimizer.bin")
        _load_into(stateful[name], load_torch(path), path, name)
    for i, name in enumerate(legacy_stateful, start=1):
        path = directory / f"custom_checkpoint_{i}.pkl"
        _load_into(stateful[name], load_torch(path), path, name)
    state.load_state_dict(saved)
    path = directory / f"random_states_{rank}.pkl"
    if path.is_file():
        rng = load_torch(path, numpy_arrays=True)
        tensors = {"torch": rng["torch_manual_seed"]}
        tensors.update({f"cuda.{i}": s for i, s in enumerate(rng.get("torch_cuda_manual_seed", []))})
        numpy = rng["numpy_random_seed"]
        restore_rng(tensors, rng["random_state"], [numpy[0], numpy[1].tolist(), *numpy[2:]])
    log.info("read the accelerate state folder %s (the next save writes linedraw's own format)", directory)
