"""onnxruntime-genai as the independent runtime our artifacts are checked against."""

from __future__ import annotations


def genai_generate(path, ids, n=8) -> list[int]:
    """Plain greedy continuation of `ids` by onnxruntime-genai (repetition penalty off, like the runner here)."""
    import onnxruntime_genai as og

    model = og.Model(str(path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n, do_sample=False, repetition_penalty=1.0)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)][len(ids):]
