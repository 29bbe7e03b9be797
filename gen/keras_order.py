"""What Keras decides by order: the names it gives layers and models in a
fresh process (creation order) and the order of a model's model.layers."""
from __future__ import annotations

import collections

from . import catalog
from .ir import Program
from .model_graph import Tensor, TopNode


def keras_names(program: Program) -> dict[tuple[str, int], str]:
    """Names as Keras gives them in a fresh process: explicit `name=`, else
    snake_case(class) made unique by one process-wide counter per prefix,
    advanced in creation order by every unnamed object."""
    counters: collections.Counter = collections.Counter()
    objects = [(d.order, "layer", d.id, d.cls, d.args.get("name")) for d in program.layers]
    objects += [(m.order, "model", m.id, "Functional", m.name) for m in program.models]
    names = {}
    for _, kind, oid, cls, explicit in sorted(objects):
        if explicit is not None and explicit.value is not None:
            names[(kind, oid)] = explicit.value
            continue
        prefix = catalog.snake_case(cls)
        n = counters[prefix]
        counters[prefix] += 1
        names[(kind, oid)] = prefix if n == 0 else f"{prefix}_{n}"
    return names


def _keras_layer_order(inputs: list[Tensor], outputs: list[Tensor]) -> tuple[list, list[TopNode]]:
    """Keras's map_graph over the model's own calls: nodes in DFS post-order from
    the outputs; depth = longest path to an output, lifted to a layer's largest
    depth; layers by decreasing depth, ties by first visit (pre-order)."""
    input_ids = {t.id for t in inputs}
    post: list[TopNode] = []
    done: set[int] = set()
    visit_index: dict[int, int] = {}
    entity_of: dict[int, object] = {}

    def walk(t: Tensor) -> None:
        node = t.top
        if id(node) in done:
            return
        entity_of.setdefault(id(node.entity), node.entity)
        visit_index.setdefault(id(node.entity), len(visit_index))
        if node.entity.cls != "InputLayer" and t.id not in input_ids:
            for x in node.inputs:
                walk(x)
        done.add(id(node))
        post.append(node)

    for t in outputs:
        walk(t)
    node_depth: dict[int, int] = {}
    entity_depth: dict[int, int] = {}
    in_graph = {id(n) for n in post}
    for node in reversed(post):
        depth = max(node_depth.setdefault(id(node), 0), entity_depth.get(id(node.entity), 0))
        entity_depth[id(node.entity)] = depth
        node_depth[id(node)] = depth
        for x in node.inputs:
            if id(x.top) in in_graph:
                node_depth[id(x.top)] = max(depth + 1, node_depth.get(id(x.top), 0))
    for t in inputs:  # inputs not connected to any output still count as layers
        if id(t.top.entity) not in entity_depth:
            entity_depth[id(t.top.entity)] = 0
            visit_index[id(t.top.entity)] = -1
            entity_of[id(t.top.entity)] = t.top.entity
    order = sorted(entity_depth, key=lambda k: (-entity_depth[k], visit_index[k]))
    return [entity_of[k] for k in order], post
