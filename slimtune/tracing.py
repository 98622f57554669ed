"""torch-pruning's dependency graph, surviving reshapes it cannot map.

torch-pruning maps channel indices through each reshape/view of the channel dim from the
channel counts it infers on both sides. Through a ShuffleNetV2 channel shuffle after a
split and a concatenation it infers 0 channels and building the graph stops with a
``ZeroDivisionError`` (``update_reshape_index_mapping``), so no layer of the model could be
pruned at all. :class:`TracedGraph` records such a reshape instead and leaves its indices
unmapped; every channel group whose dependencies pass through it is then left out by
:mod:`slimtune.layers` (its channels stay), and the rest of the model is pruned as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch_pruning as tp
from torch_pruning.dependency import index_mapping


class TracedGraph(tp.DependencyGraph):
    """A ``tp.DependencyGraph`` whose unmappable reshapes are recorded in ``unmapped``
    (node -> the error) rather than raised."""

    def __init__(self) -> None:
        super().__init__()
        self.unmapped: dict[Any, BaseException] = {}

    @contextmanager
    def _lenient_reshapes(self) -> Iterator[None]:
        # torch-pruning calls the module-level function by name from update_index_mapping
        # (while building and in every get_pruning_group): replaced only meanwhile
        original = index_mapping.update_reshape_index_mapping

        def lenient(graph: Any, node: Any) -> None:
            try:
                original(graph, node)
            except ZeroDivisionError as err:
                self.unmapped[node] = err

        index_mapping.update_reshape_index_mapping = lenient
        try:
            yield
        finally:
            index_mapping.update_reshape_index_mapping = original

    def build_dependency(self, *args: Any, **kwargs: Any) -> TracedGraph:
        with self._lenient_reshapes():
            super().build_dependency(*args, **kwargs)
        return self

    def get_pruning_group(self, *args: Any, **kwargs: Any) -> tp.Group:
        with self._lenient_reshapes():
            return super().get_pruning_group(*args, **kwargs)

    def touches_unmapped(self, group: tp.Group) -> bool:
        """Whether ``group``'s channels pass through a reshape left unmapped."""
        return any(dep.source in self.unmapped or dep.target in self.unmapped
                   for dep, _ in group)
