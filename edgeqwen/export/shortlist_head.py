"""A shortlist lm_head for decoding: a low-bit copy of the head ranks the vocabulary, the K best candidates are scored
exactly from the int8 head's own rows, every other logit is FILL.

On the CPU a decoded token of the Qwen2.5-0.5B shape reads 342 MB of weights, 140 MB of them the int8 head (151,936 ×
896). Ranking needs far less precision than the logits a sampler reads: a 2- or 4-bit copy of the head (quantized
from the checkpoint's own weights, ranking_quant.py) costs a quarter or half the bytes, onnxruntime's TopK keeps K
candidates, and their rows of the int8 table (GatherBlockQuantized — the same bytes the head and a tied embedding table
already share) give their exact logits, in fp32 against the hidden state. With a 4-bit copy and K = 64 decode reads
274 MB per token (1.13× decode on that shape, 2 cores, AVX-512 VNNI, fresh processes: benchmarks/ab_decode.py); a
2-bit copy with K = 256 (cpu-x86_64's default) 240 MB, 1.06× the 4-bit copy's decode on a first-generation Zen
(AVX2), where the kernel's arithmetic, not memory, bounds a step. The copy adds that many bytes to the file and RAM.
(The copy's names, `weight_Q4` and `MatMul_Q4`, predate the 2-bit copy and stay: artifacts built before carry them.)

What changes for a decoder, and who reads what:
- model.onnx (decode; onnxruntime-genai and Foundry Local load it): logits are exact for the K candidates, FILL (finite,
  -1e30: penalties and softmax stay defined) elsewhere. Greedy decoding picks among them, sampling with top_k <= K
  draws from them.
- lm_head.shortlist.onnx: the same shortlist over every position of `hidden_states` — speculative verify steps score
  their positions with it, so a verify step picks exactly what one-token decoding picks.
- lm_head.rows.onnx: the exact logits of given token ids (the candidates' arithmetic): a grammar-constrained step
  whose own pick the grammar refuses scores the allowed tokens with it where they are few.
- lm_head.onnx: the full int8 head (export/scoring_head.py), unchanged: the accuracy stage's scores, and the decoding
  that needs the whole distribution (edgeqwen's runner: sampling without a top-k or with one over K; a constrained step
  whose grammar allows many tokens but not the shortlist's pick) run the decoder's hidden state through it.
The accuracy stage measures the shortlist on the evaluation text: how often the int8 head's argmax is among the K
candidates (recall) and the decode head's top-1 agreement with the reference; both are gated. A 2-bit copy that
misses is requantized to 4 bits (`set_ranking_bits`) and measured again; a 4-bit one that misses leaves the artifact
(`drop_shortlist`).

The graph's metadata records K (SHORTLIST_META), so a runner sees it without the package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .graph_edit import node_attrs
from .head_sym import HEAD_PREFIX, checkpoint_head_weights
from .ranking_quant import ranking_copy
from .scoring_head import HIDDEN_OUTPUT, LOGITS_OUTPUT, write_scoring_head

SHORTLIST_FILE = "lm_head.shortlist.onnx"
ROWS_FILE = "lm_head.rows.onnx"
SHORTLIST_META = "edgeqwen.shortlist_k"
FILL = -1.0e30  # the logit of a token outside the shortlist (exp() of it is exactly 0; x 10 penalties stays finite)
PREFIX = "/lm_head/shortlist/"
W4, S4 = "lm_head.shortlist.weight_Q4", "lm_head.shortlist.weight_scale"  # the ranking copy (2 or 4 bits: its node's)
Z4 = "lm_head.shortlist.weight_zp"  # a 2-bit ranking copy's zero points (ranking_quant.py)
K_NAME, AXIS_NAME, FILL_NAME = "lm_head.shortlist.k", "lm_head.shortlist.axis", "lm_head.shortlist.fill"
TABLE_SHAPE = "lm_head.shortlist.table_shape"
CUT = ("lm_head.shortlist.cut_start", "lm_head.shortlist.cut_end")  # a padded row's first H columns


def padded_width(a: dict) -> int:
    """The columns of one row of the head's bytes: H padded to whole blocks (MatMulNBits pads K)."""
    return -(-a["K"] // a["block_size"]) * a["block_size"]


def shape_constants(a: dict) -> list:
    """The small constants a shortlist graph reads besides its weights: the [V, padded H] table shape, the cut to H."""
    from onnx import numpy_helper

    return [numpy_helper.from_array(np.array([a["N"], padded_width(a)], np.int64), TABLE_SHAPE),
            numpy_helper.from_array(np.array([0], np.int64), CUT[0]),
            numpy_helper.from_array(np.array([a["K"]], np.int64), CUT[1])]


def _head(model):
    return next((n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith(HEAD_PREFIX)
                 and LOGITS_OUTPUT in n.output), None)


def row_nodes(hidden: str, ids: str, out: str, table: str, scales: str, a: dict) -> list:
    """hidden [B, S, H], token ids [B, S, N] → their logits [B, S, N]: the tokens' int8 rows of `table` ([V, H] padded to
    whole blocks, 8-bit, block-quantized along H with `scales`; cut back to H) times the hidden state, in fp32."""
    from onnx import helper

    p = PREFIX
    rows = p + "rows" if padded_width(a) == a["K"] else p + "padded_rows"
    cut = [] if rows == p + "rows" else [
        helper.make_node("Slice", [rows, CUT[0], CUT[1], AXIS_NAME], [p + "rows"], name=p + "Slice")]
    return [
        helper.make_node("GatherBlockQuantized", [table, ids, scales], [rows], name=p + "GatherBlockQuantized",
                         domain="com.microsoft", bits=8, block_size=a["block_size"], gather_axis=0, quantize_axis=1),
        *cut,
        helper.make_node("Unsqueeze", [hidden, AXIS_NAME], [p + "column"], name=p + "Unsqueeze"),
        helper.make_node("MatMul", [p + "rows", p + "column"], [p + "exact4"], name=p + "MatMul"),
        helper.make_node("Squeeze", [p + "exact4", AXIS_NAME], [out], name=p + "Squeeze"),
    ]


def ranking_node(hidden: str, a: dict, bits: int):
    """The ranking copy's MatMulNBits: hidden [B, S, H] → coarse scores [B, S, V] (`a`: the head's K, N, block size,
    accuracy level); a 2-bit copy reads its zero points."""
    from onnx import helper

    return helper.make_node("MatMulNBits", [hidden, W4, S4] + ([Z4] if bits == 2 else []), [PREFIX + "coarse"],
                            name=PREFIX + "MatMul_Q4", domain="com.microsoft", K=a["K"], N=a["N"], bits=bits,
                            block_size=a["block_size"], accuracy_level=a.get("accuracy_level", 0))


def shortlist_nodes(hidden: str, logits: str, table: str, scales: str, a: dict, bits: int = 4) -> list:
    """hidden [B, S, H] → logits [B, S, V]: the ranking copy's scores, TopK K, the candidates' exact logits
    (`row_nodes`), scattered into FILL."""
    from onnx import helper

    p = PREFIX
    return [
        ranking_node(hidden, a, bits),
        helper.make_node("TopK", [p + "coarse", K_NAME], [p + "values", p + "ids"], name=p + "TopK", axis=-1, sorted=0),
        *row_nodes(hidden, p + "ids", p + "exact", table, scales, a),
        helper.make_node("Shape", [p + "coarse"], [p + "shape"], name=p + "Shape"),
        helper.make_node("Expand", [FILL_NAME, p + "shape"], [p + "filled"], name=p + "Expand"),
        helper.make_node("ScatterElements", [p + "filled", p + "ids", p + "exact"], [logits], name=p + "Scatter", axis=-1),
    ]


def _head_weights(checkpoint: Path, a: dict) -> tuple[str, np.ndarray]:
    """The checkpoint's own head weights [N, K] (not the int8 head's): the ranking copy is quantized from them."""
    name, w = checkpoint_head_weights(checkpoint, (a["N"], a["K"]))
    if name is None:
        raise RuntimeError(f"{checkpoint}: no lm_head or embedding weights to quantize the shortlist's ranking copy from")
    if w is None:
        raise RuntimeError(f"{checkpoint}: {name} is not the graph's head's shape ({a['N']}, {a['K']})")
    return name, w


def _ranking_tensors(w: np.ndarray, bits: int, block: int) -> list:
    """The ranking copy's initializers (W4, S4 and, 2-bit, Z4)."""
    from onnx import numpy_helper

    packed, scales, zeros = ranking_copy(w, bits, block)
    return [numpy_helper.from_array(packed, W4), numpy_helper.from_array(scales.reshape(-1), S4)] + \
        ([] if zeros is None else [numpy_helper.from_array(zeros, Z4)])


def _ranking_note(name: str, tensors: list, bits: int, block: int) -> str:
    mb = sum(int(np.prod(t.dims)) * (4 if t.name == S4 else 1) for t in tensors) / 1e6
    return (f"a {bits}-bit copy of {name} ({mb:.0f} MB, {'symmetric' if bits == 4 else 'zero points'}, blocks of "
            f"{block}) ranks the vocabulary")


def add_shortlist(model, checkpoint: Path, k: int, bits: int = 4) -> str | None:
    """Replace `model`'s symmetric int8 lm_head (weights in memory; graph_edit.edit_graph) by a K-candidate shortlist
    head whose ranking copy has `bits` (ranking_quant.py): a note, or None where there is no such head (then nothing
    changes)."""
    from onnx import helper, numpy_helper

    g = model.graph
    head = _head(model)
    if head is None:
        return None
    a = node_attrs(head)
    if a["bits"] != 8 or len(head.input) > 3 and head.input[3]:
        raise RuntimeError(f"{head.name}: the shortlist head scores its candidates with the int8 head's rows and needs "
                           f"it symmetric 8-bit (export/head_sym.py); found {a['bits']}-bit"
                           f"{' with zero points' if len(head.input) > 3 and head.input[3] else ''}")
    if not 1 <= k < a["N"]:
        raise RuntimeError(f"shortlist of {k} candidates for a vocabulary of {a['N']}: k must be in [1, {a['N']})")
    name, w = _head_weights(checkpoint, a)
    ranking = _ranking_tensors(w, bits, a["block_size"])
    del w
    weight, scale = head.input[1], head.input[2]
    table = _table_of(model, weight)
    if table is None:  # untied: the head's bytes viewed as a [V, H] table, as the builder does for a tied one
        table = PREFIX + "table"
        g.node.append(helper.make_node("Reshape", [weight, TABLE_SHAPE], [table], name=PREFIX + "Reshape"))
    g.initializer.extend(ranking + [numpy_helper.from_array(np.array([k], np.int64), K_NAME),
                          numpy_helper.from_array(np.array([-1], np.int64), AXIS_NAME),
                          numpy_helper.from_array(np.array([FILL], np.float32), FILL_NAME)])
    at = list(g.node).index(head)
    g.node.remove(head)
    nodes = shortlist_nodes(head.input[0], LOGITS_OUTPUT, table, scale, a, bits)
    for i, n in enumerate(nodes):
        g.node.insert(at + i, n)
    read = {i for n in g.node for i in n.input}
    g.initializer.extend(t for t in shape_constants(a) if t.name in read)
    _topological(g)
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, SHORTLIST_META: str(k)})
    return (f"lm_head shortlist for decoding: {_ranking_note(name, ranking, bits, a['block_size'])}, the top {k} are "
            f"scored with the int8 head's rows; {SHORTLIST_FILE} scores verify steps the same way, lm_head.onnx keeps "
            f"the full head")


def ranking_bits(model) -> int:
    """The bits of a shortlist graph's ranking copy (0: no shortlist)."""
    node = next((n for n in model.graph.node if n.name == PREFIX + "MatMul_Q4"), None)
    return node_attrs(node)["bits"] if node is not None else 0


def set_ranking_bits(artifact: Path, checkpoint: Path, bits: int) -> str | None:
    """Requantize a shortlist artifact's ranking copy to `bits` from the checkpoint (the accuracy stage's fallback: a
    2-bit copy whose candidates missed the recall bar gets a 4-bit one): model.onnx and its data file written again,
    then the head files over the new offsets. A note, or None where the copy already has `bits`."""
    from .graph_edit import edit_graph

    def edit(model):
        node = next(n for n in model.graph.node if n.name == PREFIX + "MatMul_Q4")
        a = node_attrs(node)
        if a["bits"] == bits:
            return None
        name, w = _head_weights(checkpoint, a)
        ranking = _ranking_tensors(w, bits, a["block_size"])
        g = model.graph
        kept = [t for t in g.initializer if t.name not in (W4, S4, Z4)]
        del g.initializer[:]
        g.initializer.extend(kept + ranking)
        node.CopyFrom(ranking_node(node.input[0], a, bits))
        return _ranking_note(name, ranking, bits, a["block_size"])

    notes = edit_graph(artifact, [edit])
    if notes:
        write_heads(artifact)
    return notes[0] if notes else None


def _table_of(model, weight: str) -> str | None:
    """The [V, H] view of the head's bytes a tied GatherBlockQuantized table already reads (a Reshape's output)."""
    for n in model.graph.node:
        if n.op_type == "Reshape" and n.input[0] == weight:
            return n.output[0]
    return None


def _topological(g) -> None:
    """Nodes in dependency order (a Reshape appended at the end feeds the head's nodes before it)."""
    have = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        ready = [n for n in pending if all(i in have for i in n.input)]
        if not ready:
            raise RuntimeError(f"graph has a cycle or a missing input near {pending[0].name}")
        for n in ready:
            ordered.append(n)
            have.update(n.output)
        pending = [n for n in pending if n not in ready]
    del g.node[:]
    g.node.extend(ordered)


def _parts(model) -> tuple[str, str, dict]:
    """A shortlist graph's int8 head bytes (what the [V, H] table views), their scales, and the int4 copy's attributes
    (K, N, block size, accuracy level)."""
    g = model.graph
    by_output = {o: n for n in g.node for o in n.output}
    gather = next(n for n in g.node if n.name == PREFIX + "GatherBlockQuantized")
    a = node_attrs(next(n for n in g.node if n.name == PREFIX + "MatMul_Q4"))
    return by_output[gather.input[0]].input[0], gather.input[2], a  # a["bits"]: the ranking copy's


def full_head(model):
    """The int8 MatMulNBits head a shortlist graph ranks for (its bytes: the table's; lm_head.onnx scores with it)."""
    from onnx import helper

    weight, scales, a = _parts(model)
    node = helper.make_node("MatMulNBits", [HIDDEN_OUTPUT, weight, scales], [LOGITS_OUTPUT],
                            name=HEAD_PREFIX + "MatMul_Q8", domain="com.microsoft", K=a["K"], N=a["N"], bits=8,
                            block_size=a["block_size"], accuracy_level=a.get("accuracy_level", 0))
    return node


def write_heads(artifact: Path) -> list[str]:
    """The head files beside a pruned model.onnx: lm_head.onnx (the full head) and, for a shortlist graph,
    lm_head.shortlist.onnx. Notes for the manifest."""
    import onnx

    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    if SHORTLIST_META not in {p.key for p in model.metadata_props}:
        return [write_scoring_head(artifact)]
    return [write_scoring_head(artifact, head=full_head(model)), write_shortlist_head(artifact)]


def write_shortlist_head(artifact: Path, decoder: str = "model.onnx") -> str | None:
    """The head files beside `artifact/decoder` (one with a shortlist head), their weights read from the decoder's
    data file by offset: lm_head.shortlist.onnx, the shortlist over every position of `hidden_states`, and
    lm_head.rows.onnx, the exact logits of given token ids (`ids` [B, S, N]) — what a constrained step reads where the
    grammar allows few tokens. A note, or None where the decoder has no shortlist."""
    import onnx
    from onnx import helper

    model = onnx.load(str(artifact / decoder), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if SHORTLIST_META not in meta:
        return None
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    weight, scales, a = _parts(model)
    view = helper.make_node("Reshape", [weight, TABLE_SHAPE], [PREFIX + "table"], name=PREFIX + "Reshape")
    hidden = next(o for o in g.output if o.name == HIDDEN_OUTPUT)
    logits = next(o for o in g.output if o.name == LOGITS_OUTPUT)
    elem, vocab = logits.type.tensor_type.elem_type, logits.type.tensor_type.shape.dim[-1]
    ids = helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch_size", "sequence_length", "tokens"])
    graphs = {
        SHORTLIST_FILE: ([view, *shortlist_nodes(HIDDEN_OUTPUT, LOGITS_OUTPUT, PREFIX + "table", scales, a, a["bits"])],
                         [hidden], vocab.dim_value or vocab.dim_param),
        ROWS_FILE: ([view, *row_nodes(HIDDEN_OUTPUT, "ids", LOGITS_OUTPUT, PREFIX + "table", scales, a)],
                    [hidden, ids], "tokens"),
    }
    for file, (nodes, inputs, width) in graphs.items():
        out = helper.make_tensor_value_info(LOGITS_OUTPUT, elem, ["batch_size", "sequence_length", width])
        used = {i for n in nodes for i in n.input}
        small = [t for t in shape_constants(a) if t.name in used]
        weights = [inits[n] for n in sorted(used) if n in inits and n not in {t.name for t in small}] + small
        graph = helper.make_graph(nodes, file.removesuffix(".onnx").replace(".", "_"), inputs, [out], initializer=weights)
        head = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                 producer_name="edgeqwen")
        helper.set_model_props(head, {SHORTLIST_META: meta[SHORTLIST_META]})
        onnx.save(head, str(artifact / file))  # initializers keep their external-data records: same bytes
    return (f"{SHORTLIST_FILE}: the decode head's shortlist over every position (speculative verify steps); "
            f"{ROWS_FILE}: the exact logits of given tokens (constrained steps); weights shared")


def drop_shortlist(artifact: Path) -> str:
    """Decode with the full int8 head again (the shortlist missed its accuracy gate): model.onnx without the shortlist's
    nodes and int4 copy (its data file written again), lm_head.onnx written again over the new offsets,
    lm_head.shortlist.onnx removed. A note."""
    from .graph_edit import edit_graph

    def edit(model):
        from onnx import helper

        g = model.graph
        head = full_head(model)
        head.input[0] = next(n for n in g.node if n.name == PREFIX + "MatMul_Q4").input[0]  # the pruned last position
        at = min(i for i, n in enumerate(g.node) if n.name.startswith(PREFIX))
        keep = [n for n in g.node if not n.name.startswith(PREFIX)]
        del g.node[:]
        g.node.extend(keep[:at] + [head] + keep[at:])
        ours = {W4, S4, Z4, K_NAME, AXIS_NAME, FILL_NAME, TABLE_SHAPE, *CUT}
        kept = [t for t in g.initializer if t.name not in ours]
        del g.initializer[:]
        g.initializer.extend(kept)
        props = {p.key: p.value for p in model.metadata_props if p.key != SHORTLIST_META}
        del model.metadata_props[:]
        helper.set_model_props(model, props)
        _topological(g)
        return "shortlist dropped"

    edit_graph(artifact, [edit])
    for file in (SHORTLIST_FILE, ROWS_FILE):
        (artifact / file).unlink(missing_ok=True)
    write_scoring_head(artifact)
    return "the shortlist head left the artifact: decoding reads the full int8 head"

