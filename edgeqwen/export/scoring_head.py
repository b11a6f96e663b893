"""The all-positions lm_head of a pruned graph, as a graph file of its own that reads the decoder's weight bytes.

A graph built with the builder's `prune_lm_head` computes logits for the last position only: prefill runs the
151,936-wide head once, not once per prompt token. Accuracy checks need every position's logits. onnxruntime runs
every node of a graph on every run, whichever outputs are asked for (measured: a second head node in model.onnx,
never fetched, cost 35 % of decode speed and 140 MB of RSS on the Qwen2.5-0.5B shape), so that head lives here:
`lm_head.onnx` holds the head node alone, its input the builder's `hidden_states` output (`include_hidden_states`),
its initializers pointing at the same offsets in `model.onnx.data` — no weight bytes are copied. The runner loads it
only to score (`Runner.step(all_logits=True)`); onnxruntime-genai, Foundry Local and decoding never see it.
"""

from __future__ import annotations

from pathlib import Path

HEAD_FILE = "lm_head.onnx"
DECODER_FILE = "model.onnx"
HIDDEN_OUTPUT = "hidden_states"  # the builder's name for the final norm's output (include_hidden_states)
LOGITS_OUTPUT = "logits"


def head_file_for(decoder: str) -> str:
    """The scoring head beside a decoder graph: lm_head.onnx for model.onnx, lm_head.wasm.onnx for model.wasm.onnx."""
    return HEAD_FILE if decoder == DECODER_FILE else "lm_head." + decoder.removeprefix("model.")


def write_scoring_head(artifact: Path, decoder: str = DECODER_FILE, head=None) -> str:
    """Write the scoring head of `artifact/decoder` (lm_head.onnx for model.onnx) from the saved graph; returns a note
    for the manifest. `head`: the head node to write (a shortlist graph's full head, export/shortlist_head.py), where
    it is not the node that produces the graph's logits."""
    import onnx
    from onnx import helper

    head_file = head_file_for(decoder)
    model = onnx.load(str(artifact / decoder), load_external_data=False)
    g = model.graph
    head = head or next((n for n in g.node if LOGITS_OUTPUT in n.output), None)
    hidden = next((o for o in g.output if o.name == HIDDEN_OUTPUT), None)
    if head is None or hidden is None or head.op_type not in ("MatMulNBits", "MatMul", "DynamicQuantizeMatMul"):
        raise RuntimeError(f"{artifact / decoder}: a pruned head graph needs a `{HIDDEN_OUTPUT}` output and a "
                           f"MatMul(NBits) producing `{LOGITS_OUTPUT}`; found "
                           f"{head.op_type if head is not None else 'no logits producer'}"
                           f"{'' if hidden is not None else f', no {HIDDEN_OUTPUT} output'}")
    inits = {t.name: t for t in g.initializer}
    weights = [inits[name] for name in head.input[1:] if name]
    missing = [name for name in head.input[1:] if name and name not in inits]
    if missing:
        raise RuntimeError(f"{artifact / decoder}: lm_head inputs {missing} are not initializers; the scoring "
                           "head can only reuse stored weights")
    logits = next(o for o in g.output if o.name == LOGITS_OUTPUT)
    elem = logits.type.tensor_type.elem_type
    vocab = logits.type.tensor_type.shape.dim[-1]
    node = helper.make_node(head.op_type, [HIDDEN_OUTPUT, *head.input[1:]], [LOGITS_OUTPUT], name=head.name,
                            domain=head.domain or None)
    node.attribute.extend(head.attribute)
    out = helper.make_tensor_value_info(LOGITS_OUTPUT, elem, ["batch_size", "sequence_length",
                                                              vocab.dim_value or vocab.dim_param])
    graph = helper.make_graph([node], "lm_head_all_positions", [hidden], [out], initializer=weights)
    head_model = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                   producer_name="edgeqwen")
    # initializers keep their external-data records (location <decoder>.data, offset, length): same bytes
    onnx.save(head_model, str(artifact / head_file))
    shared = sum(1 for t in weights if t.data_location == onnx.TensorProto.EXTERNAL)
    return (f"lm_head pruned to the last position for prefill and decode; {head_file} (the head alone, {shared} of its "
            f"{len(weights)} weight tensors read from {decoder}.data, none copied) scores every position for "
            "accuracy checks")
