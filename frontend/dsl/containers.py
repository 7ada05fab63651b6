"""Sequential (layers applied in order) and ModuleList (an indexable list of registered modules)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from convc.frontend.dsl.errors import ModelDefinitionError
from convc.frontend.dsl.module import Module


def _check(module: Any, where: str) -> Module:
    if not isinstance(module, Module):
        raise ModelDefinitionError(f"{where} is a {type(module).__name__}, not a convc.nn Module")
    return module


class Sequential(Module):
    """``Sequential(layer, layer, ...)`` (named "0", "1", ... like PyTorch) or ``Sequential({"name": layer})``."""

    def __init__(self, *layers: Module | Mapping[str, Module]):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            for name, m in layers[0].items():
                self.add_module(name, _check(m, f"Sequential item {name!r}"))
        else:
            for i, m in enumerate(layers):
                self.add_module(str(i), _check(m, f"Sequential item {i}"))

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self._modules)), _check(module, f"Sequential item {len(self._modules)}"))
        return self

    def __getitem__(self, index: int | slice) -> Module | Sequential:
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(dict(items[index]))
        return items[index][1]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class ModuleList(Module):
    """Registers its modules ("blocks.0.conv", ...); has no forward of its own."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self._modules)), _check(module, f"ModuleList item {len(self._modules)}"))
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, *inputs: Any) -> Any:
        raise ModelDefinitionError("ModuleList has no forward: iterate over it in the parent's forward()")
