"""Sharded training (FSDP2, torch's ``fully_shard``) of a detectron2 model under Lightning's ``ModelParallelStrategy``.

What d2lightning does when a fit runs on ``ModelParallelStrategy`` (``LIGHTNING.STRATEGY: fsdp``, or the strategy
given to the Trainer):

* **Sharding units** (:class:`FSDPSharding`): the modules named in ``units`` (dotted names or class names), or, by
  default, every module whose parameters not yet in a smaller unit reach ``min_params`` (a backbone stage or block,
  a head); the model itself is the last unit. Parameters shared between two units are refused (FSDP would shard
  each copy on its own).
* **The optimizer stays the trainer's**: ``fully_shard`` replaces the parameters with sharded ones, so the
  optimizer's parameter groups (and any state a resume loaded) are moved onto them in place; the LR scheduler and
  the hooks keep their references.
* **Checkpoints stay detectron2's** (:class:`FullStates`): at every iteration where some rank saves a checkpoint
  (the ranks agree on them when training starts) every rank takes part in gathering the full model and optimizer
  states; the main process's checkpointer then saves them as an unsharded run would — ``"model"`` in detectron2's
  layout, ``"optimizer"`` in torch's — so detectron2 and ``d2lightning eval`` load the file in one process, and a
  resume loads it into the unsharded model before the next fit shards it again.
* **Outside the training steps** (d2lightning's ``inference_on_dataset`` and ``EvalHook``): the weights are gathered on
  every rank (:func:`d2lightning.utils.sharding.gathered_weights`), so each rank evaluates its part of the data on its
  own, with no collective per batch. After the fit the model stays sharded, as Lightning leaves it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from d2lightning.utils.sharding import holds_shards, mark_resharding

__all__ = [
    "FSDPSharding",
    "FullStates",
    "check_hooks_for_sharding",
    "check_sharding_options",
    "data_parallel_mesh",
    "fsdp_strategy",
    "is_sharding_strategy",
]

logger = logging.getLogger(__name__)

_DTYPES = {"": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class FSDPSharding:
    """How a detectron2 model is cut into FSDP units (``LIGHTNING.FSDP.*``).

    Args:
        units: the modules that become their own unit: dotted names (``"backbone.bottom_up.res4"``) or class names
            (``"BasicBlock"``); empty: chosen by size (``min_params``).
        min_params: with ``units`` empty, a module becomes a unit when its parameters that no smaller unit holds
            number at least this many.
        reshard_after_forward: free the gathered weights of a unit after its forward (less memory, one more
            all-gather in the backward).
        param_dtype: the dtype units compute in (FSDP's mixed precision: ``"bfloat16"``, ``"float16"``; empty: the
            parameters' own).
        reduce_dtype: the dtype gradients are reduced in (empty: ``param_dtype``'s).
    """

    units: Sequence[str] = ()
    min_params: int = 1_000_000
    reshard_after_forward: bool = True
    param_dtype: str = ""
    reduce_dtype: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", tuple(self.units))
        if isinstance(self.min_params, bool) or not isinstance(self.min_params, int) or self.min_params < 1:
            raise ValueError(f"FSDP min_params must be a positive int, got {self.min_params!r}")
        for key in ("param_dtype", "reduce_dtype"):
            value = getattr(self, key)
            if value not in _DTYPES:
                raise ValueError(f"FSDP {key}={value!r}: use one of {sorted(k for k in _DTYPES if k)} or ''")

    def plan(self, model: nn.Module) -> list[str]:
        """The dotted names of the units inside ``model``, innermost first (the model itself, ``""``, is last).

        Raises:
            ValueError: for a name in ``units`` that matches no module, or parameters shared by two units.
        """
        names = self._named_units(model) if self.units else self._sized_units(model)
        _check_no_shared_parameters(model, names)
        return [*names, ""]

    def apply(self, model: nn.Module, mesh: Any, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        """Shard ``model`` in place over ``mesh`` and move ``optimizer`` onto the sharded parameters.

        Returns:
            the units' names (see :meth:`plan`).
        """
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        plan = self.plan(model)
        _broadcast_from_first(model, mesh)
        before = {id(p): name for name, p in model.named_parameters()}
        param_dtype = _DTYPES[self.param_dtype]
        reduce_dtype = _DTYPES[self.reduce_dtype] or param_dtype
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
        for name in plan:
            module = model.get_submodule(name) if name else model
            # the model itself keeps its weights gathered after the forward: the backward needs them at once
            reshard = self.reshard_after_forward and bool(name)
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
            mark_resharding(module, reshard)
        if optimizer is not None:
            after = dict(model.named_parameters())
            _move_optimizer(optimizer, {old: after[name] for old, name in before.items()})
        return plan

    # ------------------------------------------------------------ private
    def _named_units(self, model: nn.Module) -> list[str]:
        found: list[str] = []
        for wanted in self.units:
            matches = [
                name
                for name, module in model.named_modules()
                if name and (name == wanted or type(module).__name__ == wanted)
            ]
            containers = [m for m in matches if _is_container(model.get_submodule(m))]
            if containers:
                raise ValueError(
                    f"FSDP unit {containers[0]!r} is a {type(model.get_submodule(containers[0])).__name__}, which has "
                    f"no forward for FSDP to gather its weights around: name its elements ({containers[0]}.0, ...) or "
                    "their class"
                )
            if not matches:
                raise ValueError(
                    f"FSDP unit {wanted!r} names no module of {type(model).__name__} (give dotted module names, e.g. "
                    f"{_example_names(model)}, or class names)"
                )
            found.extend(m for m in matches if m not in found)
        return sorted(found, key=lambda n: -n.count("."))  # inner units first

    def _sized_units(self, model: nn.Module) -> list[str]:
        units: list[str] = []

        def visit(name: str, module: nn.Module) -> int:
            """The parameters of ``module`` that no unit inside it holds."""
            free = sum(p.numel() for p in module.parameters(recurse=False))
            for child_name, child in module.named_children():
                free += visit(f"{name}.{child_name}" if name else child_name, child)
            if name and free >= self.min_params and not _is_container(module):
                units.append(name)
                return 0
            return free  # a container (ModuleList) has no forward for FSDP to hook: its parent holds them

        visit("", model)
        return units


def _is_container(module: nn.Module) -> bool:
    """A module that only holds others (``ModuleList``, ``ModuleDict``) and is never called itself."""
    return isinstance(module, (nn.ModuleList, nn.ModuleDict))


def _broadcast_from_first(model: nn.Module, mesh: Any) -> None:
    """Every rank starts from the first rank's weights and buffers, as DDP makes them when it wraps a model (detectron2
    seeds each rank differently, so models built on each rank differ); FSDP would otherwise shard a mix of them."""
    import torch.distributed as dist

    group = mesh.get_group()
    first = dist.get_global_rank(group, 0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=first, group=group)


def _example_names(model: nn.Module) -> str:
    names = [n for n, _ in model.named_children()][:3]
    return ", ".join(repr(n) for n in names) or "'backbone'"


def _check_no_shared_parameters(model: nn.Module, units: list[str]) -> None:
    """A parameter reachable from two units (tied weights) cannot be sharded by each on its own."""
    owner: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        unit = next((u for u in units if name.startswith(u + ".")), "")
        seen = owner.setdefault(id(param), unit)
        if seen != unit:
            raise ValueError(
                f"FSDP: parameter {name!r} is tied to one in {'the model itself' if not seen else repr(seen)} "
                f"(the same tensor in two sharding units): put both in one unit (LIGHTNING.FSDP.UNITS), or untie them"
            )


def _move_optimizer(optimizer: torch.optim.Optimizer, new_of: dict[int, nn.Parameter]) -> None:
    """Point the optimizer's groups at the sharded parameters; state already loaded (a resume) is sharded alike."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for group in optimizer.param_groups:
        moved = []
        for old in group["params"]:
            new = new_of.get(id(old))
            if new is None:
                raise ValueError(
                    "FSDP: the optimizer holds a parameter that is not the model's: build the optimizer from "
                    "model.parameters()"
                )
            state = optimizer.state.pop(old, None)
            if state:
                assert isinstance(new, DTensor)
                optimizer.state[new] = {
                    key: distribute_tensor(value.to(new.device), new.device_mesh, new.placements)
                    if isinstance(value, torch.Tensor) and value.shape == old.shape and value.dim() > 0
                    else value
                    for key, value in state.items()
                }
            moved.append(new)
        group["params"] = moved


def is_sharding_strategy(strategy: Any) -> bool:
    """Whether Lightning's ``strategy`` shards the model with FSDP2 (``ModelParallelStrategy``)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy)


def fsdp_strategy(world_size: int) -> Any:
    """Lightning's ``ModelParallelStrategy`` set up for FSDP only: every process holds one shard of each unit."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1)


def check_sharding_options(strategy: Any) -> None:
    """Refuse, in one line each, a Lightning strategy d2lightning cannot shard a detectron2 model with.

    Raises:
        ValueError: for ``FSDPStrategy`` (FSDP1).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ValueError(
            "FSDPStrategy (torch's FSDP1 wrapper) is not supported for detectron2 models: use Lightning's "
            "ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1), which shards them with FSDP2 "
            "(fully_shard) on GPUs and CPUs (LIGHTNING.STRATEGY: fsdp in a config)"
        )


def data_parallel_mesh(strategy: Any) -> Any:
    """The data-parallel device mesh of a ``ModelParallelStrategy`` (tensor parallelism is refused).

    Raises:
        ValueError: when the strategy also splits tensors (``tensor_parallel_size > 1``).
    """
    mesh = strategy.device_mesh
    tensor_parallel = mesh["tensor_parallel"].size()
    if tensor_parallel > 1:
        raise ValueError(
            f"ModelParallelStrategy with tensor_parallel_size={tensor_parallel}: d2lightning shards detectron2 models "
            f"with FSDP only; use ModelParallelStrategy(data_parallel_size={mesh.size()}, tensor_parallel_size=1) "
            "(its 'auto' sizes give tensor parallelism over the GPUs of a machine)"
        )
    return mesh["data_parallel"]


def _full(value: Any, keep: bool) -> Any:
    """``value`` with its shards gathered (a collective for a sharded tensor); None where it is not kept."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        full = value.full_tensor()
        return full.detach().cpu() if keep else None
    if isinstance(value, dict):
        return {k: _full(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_full(v, keep) for v in value]
    return value


class FullStates:
    """The full states of a sharded model and its optimizer, gathered for the checkpoints of one iteration.

    While open, ``model.state_dict()`` and ``optimizer.state_dict()`` on the main process return the states
    :meth:`gather` collected (as an unsharded run would have them); outside such an iteration they refuse with a line
    saying why (gathering needs every rank, and a checkpointer may run on one only).

    Args:
        model: the sharded model.
        optimizer: its optimizer, or None.
        keep: whether this process keeps what it gathers (the main process).
        current_iteration: the trainer's iteration now (what was gathered holds for that iteration only).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        keep: bool,
        current_iteration: Callable[[], int],
    ) -> None:
        self._model = model
        self._optimizer = optimizer
        self._keep = keep
        self.current_iteration = current_iteration
        self._iteration: int | None = None
        self._model_state: dict[str, Any] | None = None
        self._optimizer_state: dict[str, Any] | None = None
        self._gathering = False

        # torch marks the hook function itself, which a bound method does not allow: plain functions around them
        def model_hook(module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
            self._model_hook(module, state, prefix, metadata)

        def optimizer_hook(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any] | None:
            return self._optimizer_hook(optimizer, state)

        self._handles = [model.register_state_dict_post_hook(model_hook)]
        if optimizer is not None:
            self._handles.append(optimizer.register_state_dict_post_hook(optimizer_hook))

    def gather(self, iteration: int) -> None:
        """Gather the full states for ``iteration`` (every rank calls it; a second call for it does nothing)."""
        if self._iteration == iteration:
            return
        self._gathering = True
        try:
            self._model_state = _full(dict(self._model.state_dict()), self._keep)
            if self._optimizer is not None:
                self._optimizer_state = _full(self._optimizer.state_dict(), self._keep)
        finally:
            self._gathering = False
        self._iteration = iteration

    def close(self) -> None:
        """Remove the hooks and drop what was gathered."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._model_state = self._optimizer_state = None
        self._iteration = None

    def _is_ready(self) -> bool:
        return self._keep and self._iteration is not None and self._iteration == self.current_iteration()

    def _ready(self, what: str) -> None:
        if not self._is_ready():
            raise RuntimeError(
                f"{what}.state_dict() of a sharded (FSDP) model at iteration {self.current_iteration()}, where the "
                "ranks did not gather it: save checkpoints from hooks with a period (PeriodicCheckpointer, "
                "BestCheckpointer) or at a stop (SigtermCheckpoint, SlurmPreemption), on the main process"
            )

    def _model_hook(self, module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
        if self._gathering or prefix or not holds_shards(state):
            return  # gathering now, or a state_dict call from a parent (Lightning's own checkpoint)
        self._ready("model")
        assert self._model_state is not None
        state.clear()
        state.update(self._model_state)

    def _optimizer_hook(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any] | None:
        if self._gathering or not holds_shards(state) or not self._is_ready():
            # outside a gathered iteration the shards are returned as they are (Lightning's own checkpoints save
            # the optimizer through the strategy); a detectron2 checkpointer there fails on the model first
            return None
        return self._optimizer_state


#: Hooks that cannot work on a sharded model, and why (by class name: d2lightning's and detectron2's alike).
_REFUSED_HOOKS = {
    "EMA": (
        "it averages the full weights in a second copy on every rank, which sharding exists to avoid; train with "
        "DDP to keep an EMA (LIGHTNING.EMA.ENABLED False here)"
    ),
}


def check_hooks_for_sharding(hooks: Sequence[Any]) -> None:
    """Refuse, in one line, a hook that cannot run on a sharded model.

    Raises:
        ValueError: for ``EMA``, and for detectron2's own ``EvalHook`` and ``PreciseBN`` (they run forward passes
            outside the training steps without gathering the weights first, as d2lightning's do).
    """
    for hook in hooks:
        name = type(hook).__name__
        why = _REFUSED_HOOKS.get(name)
        if why is None and name in ("EvalHook", "PreciseBN") and not type(hook).__module__.startswith("d2lightning."):
            why = (
                f"{type(hook).__module__}.{name} runs forward passes outside the training steps, where each batch "
                f"of a rank would need the others: use d2lightning.engine.hooks.{name}, which gathers the weights "
                "first"
            )
        if why is not None:
            raise ValueError(f"{name} cannot run with FSDP (LIGHTNING.STRATEGY fsdp / ModelParallelStrategy): {why}")
