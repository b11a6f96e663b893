"""A saved graph read with its weights in memory, edited and written back: the exporters' post-processing
(post_export.py: head_sym.py and fuse.py in one read and one write) and the web target's WebAssembly graph go through
here."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def node_attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def replace_nodes(graph, nodes=None, added=()) -> None:
    """`graph`'s nodes become `nodes` (None: kept as they are); its initializers, those a node still reads plus
    `added`."""
    if nodes is not None:
        del graph.node[:]
        graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used] + list(added)
    del graph.initializer[:]
    graph.initializer.extend(kept)


def load_with_weights(path: Path):
    """(the model at `path` with every external tensor read into memory, the external data files it read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    onnx.load_external_data_for_model(model, str(path.parent))
    return model, locations


def save_with_weights(model, path: Path, data: str, old: list[str] = ()) -> None:
    """Write `model` to `path`, its tensors over 1 KB into `data` beside it, world-readable (onnx creates the data file
    owner-only). `old` data files go first: onnx appends to an existing one, and every tensor is in memory now."""
    import onnx

    for p in {path.parent / name for name in (*old, data)}:
        p.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    for p in (path, path.parent / data):
        p.chmod(0o644)


def edit_graph(artifact: Path, edits: list[Callable], graph: str = "model.onnx") -> list[str]:
    """Apply each edit (model in memory -> a note, or None where it changed nothing) to `artifact/graph`; written back
    once, only when one changed it. The external data file is rewritten: graphs that read it by offset (lm_head.onnx)
    come after."""
    path = artifact / graph
    model, locations = load_with_weights(path)
    notes = [n for n in (edit(model) for edit in edits) if n]
    if notes:
        save_with_weights(model, path, locations[0] if locations else graph + ".data", locations)
    return notes

