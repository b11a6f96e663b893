"""Qwen2.5-VL: the image path without torch (preprocessing, encoder grid inputs, M-RoPE positions) against
transformers, a tiny random-weight VL checkpoint built end to end (vision.onnx + embedding.onnx + the builder's
decoder), image+text logits parity with PyTorch, images through the runner's CLI and through `serve` with the openai
client, and onnxruntime-genai loading the artifact. Random weights: values do not matter here, parity does."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import shutil
import sys

import numpy as np
import openai
import pytest

from edgeqwen.build import BuildOptions, build
from edgeqwen.errors import EdgeQwenError
from edgeqwen.runtime import Runner
from edgeqwen.runtime.runner import RunnerError, Sampling
from edgeqwen.runtime.vision import ImageError, ImageProcessor, VisionConfig, encoder_inputs, load_image, rope_index

from tests.helpers.serving import client, serving

RECIPE = "qwen2.5-vl-3b-instruct/cpu-x86_64-int4"


def _png(h: int, w: int, seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture(scope="module")
def vl(tmp_path_factory, random_qwen2_vl, artifacts):
    """The tiny VL checkpoint, its int4 artifact (evaluated, so the build's gate ran; alone in a models folder for the
    server) and an fp32 one."""
    root = tmp_path_factory.mktemp("vl")
    ckpt = random_qwen2_vl
    int4 = root / "models" / "vl-int4"
    shutil.copytree(artifacts.get(RECIPE, ckpt, evaluate=True), int4)
    fp32 = artifacts.get("qwen2.5-vl-3b-instruct/cpu-x86_64-fp32", ckpt, evaluate=True)
    return ckpt, int4, fp32


def test_preprocessing_matches_transformers_image_processor():
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    cfg = VisionConfig(max_pixels=28 * 28 * 64)
    ours = ImageProcessor(cfg)
    theirs = Qwen2VLImageProcessor(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    for h, w in ((123, 201), (300, 90), (500, 500), (20, 40)):  # down-, up-sized, odd aspect, below min_pixels
        img = Image.open(io.BytesIO(_png(h, w)))
        pixels, grid = ours.preprocess(img)
        ref = theirs(images=[img], return_tensors="np")
        assert grid.tolist() == ref["image_grid_thw"][0].tolist()
        np.testing.assert_allclose(pixels, ref["pixel_values"], atol=1e-5)


def test_encoder_inputs_and_rope_index_match_transformers(vl):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    ckpt, _, _ = vl
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    from edgeqwen.export.vision_export import vision_config_for

    cfg = vision_config_for(model.config)
    grids = np.array([[1, 8, 14], [1, 22, 6]])
    feeds = encoder_inputs(grids, cfg)
    visual = model.model.visual
    rot = visual.rot_pos_emb(torch.from_numpy(grids))
    windex, cu = visual.get_window_index(torch.from_numpy(grids))
    assert feeds["window_index"].tolist() == windex.tolist()
    n = int(grids[:, 1:].prod(1).sum())
    want = rot.reshape(n // 4, 4, -1)[windex].reshape(n, -1)
    np.testing.assert_allclose(feeds["rotary_cos"], torch.cat([want, want], -1).cos().numpy(), atol=1e-6)
    # window segments change exactly at the (deduplicated) window boundaries
    bounds = sorted(set(int(x) for x in cu))
    assert [i for i in range(1, n) if feeds["window_segments"][i] != feeds["window_segments"][i - 1]] == bounds[1:-1]
    pad, start, end = cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_start_token_id + 1
    ids = [5, 6, start] + [pad] * 28 + [end, 7, start] + [pad] * 33 + [end, 8, 9]
    ours, nxt = rope_index(ids, grids, cfg)
    theirs, delta = model.model.get_rope_index(torch.tensor([ids]), torch.from_numpy(grids), None,
                                               attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    assert (theirs[:, 0].numpy() == ours).all() and nxt - len(ids) == int(delta)
    with pytest.raises(ImageError, match="placeholders for 1"):
        rope_index(ids[:34], grids, cfg)


def test_build_writes_the_three_graphs_and_gates_image_text_parity(vl):
    _, int4, fp32 = vl
    manifest = json.loads((int4 / "manifest.json").read_text())
    for name in ("vision.onnx", "embedding.onnx", "model.onnx", "vision.py", "vision_config.json", "runner.py"):
        assert name in manifest["files"], name
    acc = manifest["accuracy"]
    assert acc["status"] == "pass" and acc["vision"]["image_tokens"] > 0 and acc["vision"]["images"] == 2
    gcfg = json.loads((int4 / "genai_config.json").read_text())["model"]
    assert gcfg["type"] == "qwen2_5_vl" and "inputs_embeds" in gcfg["decoder"]["inputs"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(int4 / "vision.onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops  # the encoder's linears are int8 blocks in an int4 recipe
    assert any("vision encoder int8" in d for d in manifest["export"]["decisions"])
    # fp32: the whole image+text path equals PyTorch (pixels → numpy preprocessing → encoder → merge → decoder)
    v = json.loads((fp32 / "manifest.json").read_text())["accuracy"]["vision"]
    assert v["logits_max_abs_diff"] < 1e-3 and v["kld_mean"] < 1e-6 and v["top1"] == 1.0 and v["feature_rel_error"] < 1e-5
    # int4 decoder + int8 encoder: measured, and worse than fp32 (so the comparison sees the quantization)
    assert acc["vision"]["feature_rel_error"] > v["feature_rel_error"] and acc["vision"]["kld_mean"] > v["kld_mean"]


def test_runner_takes_images_from_the_cli_and_the_api(vl, tmp_path):
    _, int4, _ = vl
    (tmp_path / "a.png").write_bytes(_png(200, 300))
    proc = subprocess.run([sys.executable, str(int4 / "runner.py"), str(int4), "-p", "What is this?", "--image",
                           str(tmp_path / "a.png"), "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    prompt_tokens = int(proc.stderr.rsplit("[", 1)[1].split()[0])
    runner = Runner(int4)
    text_only = len(runner.encode(runner.apply_chat_template([{"role": "user", "content": "What is this?"}])))
    assert prompt_tokens == text_only + 3 + 77 - 1  # + vision start/pad/end, the pad expanded to 14x22/4 = 77 tokens
    # the same prompt with the same image gives the same answer through the API as through the CLI
    res = runner.generate("What is this?", Sampling(max_new_tokens=4), chat=True, images=[tmp_path / "a.png"])
    assert res.prompt_tokens == prompt_tokens
    with pytest.raises(RunnerError, match="1 image"):
        runner.generate(runner.encode("no placeholder"), Sampling(max_new_tokens=2), images=[tmp_path / "a.png"])
    with pytest.raises(RunnerError, match="image 1: not a readable image"):
        runner.generate("x", Sampling(max_new_tokens=2), chat=True, images=[b"not a png"])


def test_serve_answers_image_url_parts_with_the_openai_client(vl, tmp_path):
    _, int4, _ = vl
    png = _png(120, 160, seed=3)
    runner = Runner(int4)
    want = runner.generate("Describe it.", runner.default_sampling(max_new_tokens=6), chat=True, images=[png])
    (tmp_path / "b.png").write_bytes(png)
    with serving(int4.parent) as server:
        c = client(server)
        model = c.models.list().data[0].id
        msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_uri(png)}},
                                             {"type": "text", "text": "Describe it."}]}]
        r = c.chat.completions.create(model=model, messages=msg, max_tokens=6)
        assert r.choices[0].message.content == want.text.strip() or r.choices[0].message.content == want.text
        assert r.usage.prompt_tokens == want.prompt_tokens
        chunks = list(c.chat.completions.create(model=model, messages=msg, max_tokens=6, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
        local = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(tmp_path / "b.png")}},
                                               {"type": "text", "text": "Describe it."}]}]
        with pytest.raises(openai.BadRequestError, match="allow-local-images"):
            c.chat.completions.create(model=model, messages=local, max_tokens=2)
        bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]
        with pytest.raises(openai.BadRequestError, match="not valid base64"):
            c.chat.completions.create(model=model, messages=bad, max_tokens=2)
        with pytest.raises(openai.BadRequestError, match="input_audio"):
            c.chat.completions.create(model=model, max_tokens=2, messages=[
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}])
    with serving(int4.parent, allow_local_images=True) as server:
        c = client(server)
        r = c.chat.completions.create(model=c.models.list().data[0].id, messages=local, max_tokens=6)
        assert r.usage.prompt_tokens == want.prompt_tokens


def test_an_image_to_a_text_model_is_a_clear_400(artifacts, trained_qwen2, tmp_path):
    import shutil

    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2), tmp_path / "m")
    with serving(tmp_path / "m") as server:
        c = client(server)
        msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_uri(_png(30, 30))}}]}]
        with pytest.raises(openai.BadRequestError, match="no vision encoder"):
            c.chat.completions.create(model=c.models.list().data[0].id, messages=msg, max_tokens=2)


def test_onnxruntime_genai_loads_the_vl_artifact_and_decodes_text(vl):
    import onnxruntime_genai as og  # a core dependency: missing is a failure, not a skip
    _, int4, _ = vl
    model = og.Model(str(int4))
    runner = Runner(int4)
    ids = runner.encode(runner.apply_chat_template([{"role": "user", "content": "hello"}]))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 6, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    got = []
    for _ in range(6):
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    assert got == runner.generate(ids, Sampling(max_new_tokens=6, ignore_eos=True)).token_ids


def test_vl_refuses_calibrated_algorithms_and_caps_images(vl, tmp_path):
    ckpt, int4, _ = vl
    r = tmp_path / "gptq.yaml"
    r.write_text("version: 1\nmodel: x\ntarget: cpu-x86_64\nprecision: int4\nquantization: {algorithm: gptq}\n")
    with pytest.raises(EdgeQwenError, match="calibrates a quantized checkpoint"):
        build(BuildOptions(str(r), tmp_path / "out", model=str(ckpt), evaluate=False))
    assert not (tmp_path / "out").exists()
    cfg = VisionConfig.load(int4 / "vision_config.json")
    assert cfg.max_pixels == 200704  # the recipe's vision.max_pixels
    pixels, grid = ImageProcessor(cfg).preprocess(load_image(_png(1000, 1500)))
    assert grid[1] * grid[2] * 14 * 14 <= cfg.max_pixels and pixels.shape[0] == grid[1] * grid[2]


def test_memory_estimate_counts_the_encoder_and_its_largest_image(vl):
    import dataclasses

    from edgeqwen.checkpoint import inspect_checkpoint
    from edgeqwen.memory import estimate
    from edgeqwen.planner import VisionPlan
    from edgeqwen.planner import plan as make_plan
    from edgeqwen.recipe import load_recipe

    ckpt = inspect_checkpoint(vl[0])
    resolved = load_recipe(RECIPE)
    plan = make_plan(resolved, ckpt)
    assert plan.vision == VisionPlan(bits=8, block=32, int8_table=True, max_pixels=200704)
    with_vision = estimate(plan, resolved, ckpt.config)
    text_only = estimate(dataclasses.replace(plan, vision=None), resolved, ckpt.config)
    assert with_vision.weights_mb > text_only.weights_mb
    bigger = estimate(dataclasses.replace(plan, vision=dataclasses.replace(plan.vision, max_pixels=4 * 200704)),
                      resolved, ckpt.config)
    assert bigger.activations_mb > 10 * with_vision.activations_mb  # attention over patches squared: 4x pixels, 16x


def test_an_export_with_external_tensors_is_saved_self_contained(tmp_path):
    """torch.onnx writes one file per tensor past 2 GB (the 3B's fp32 encoder is 2.7 GB): what lands in the artifact
    must not point back into the scratch folder, which is deleted."""
    import shutil

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeqwen.export.vision_export import save_self_contained

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w, "w")])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    onnx.save(helper.make_model(graph), str(scratch / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=0)
    assert len(list(scratch.iterdir())) == 2  # the graph and one tensor file
    (tmp_path / "art").mkdir()
    save_self_contained(scratch / "m.onnx", tmp_path / "art" / "m.onnx")
    shutil.rmtree(scratch)
    got = ort.InferenceSession(str(tmp_path / "art" / "m.onnx")).run(None, {"x": np.ones((1, 3), np.float32)})[0]
    np.testing.assert_array_equal(got, np.ones((1, 3), np.float32) @ w)
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["m.onnx", "m.onnx.data"]


def test_placeholder_text_without_an_image_is_refused(vl):
    _, int4, _ = vl
    runner = Runner(int4)
    with pytest.raises(RunnerError, match="placeholder token"):
        runner.generate("look: <|vision_start|><|image_pad|><|vision_end|>", Sampling(max_new_tokens=2), chat=True)
    with serving(int4.parent) as server:
        c = client(server)
        with pytest.raises(openai.BadRequestError, match="no image was given"):
            c.completions.create(model=c.models.list().data[0].id, prompt="<|image_pad|>", max_tokens=2)


def test_the_hub_checkpoint_layout_builds_with_parity(random_qwen2_vl, tmp_path):
    """Qwen/Qwen2.5-VL-3B-Instruct on the hub has a flat config (the decoder's keys at the top, no text_config) and
    `visual.*` / `model.layers.*` weight names; transformers 4.57 saves text_config and `model.visual.*` /
    `model.language_model.*`. Both layouts build to the same parity."""
    import shutil

    from safetensors.torch import load_file, save_file

    hub = tmp_path / "hub"
    shutil.copytree(random_qwen2_vl, hub)
    cfg = json.loads((hub / "config.json").read_text())
    text = cfg.pop("text_config")
    flat = {**{k: v for k, v in text.items() if k not in ("model_type", "architectures", "dtype")}, **cfg}
    (hub / "config.json").write_text(json.dumps(flat))
    renamed = {}
    for key, value in load_file(str(hub / "model.safetensors")).items():
        if key.startswith("model.visual."):
            key = "visual." + key[len("model.visual."):]
        elif key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model."):]
        renamed[key] = value
    assert "visual.blocks.0.attn.qkv.weight" in renamed and "model.embed_tokens.weight" in renamed
    save_file(renamed, str(hub / "model.safetensors"), metadata={"format": "pt"})
    out = build(BuildOptions("qwen2.5-vl-3b-instruct/cpu-x86_64-fp32", tmp_path / "out", model=str(hub), evaluate=True))
    v = json.loads((out / "manifest.json").read_text())["accuracy"]["vision"]
    assert v["kld_mean"] < 1e-6 and v["top1"] == 1.0 and v["feature_rel_error"] < 1e-5


# Batched vs lone on the random-weight VL artifact, whose logits span about ±1.5 (tiny-qwen2's: ±15, hence not
# INT8_ACTIVATION_TOL): measured max |logit diff| 2.4e-7 on an AVX-512 host, 0.004 under qemu -cpu Haswell (other
# MatMulNBits paths per batch shape and prefill chunk); one position off moves them by 0.019, another prompt's KV by 0.07.
VL_BATCH_TOL = 0.01


def test_batched_image_and_text_requests_equal_lone_ones(vl):
    """Continuous batching on a VL artifact: image requests (features merged chunk by chunk, M-RoPE positions per
    row) and text ones share decode steps over 2 slots, prefill in chunks of 16 (an image spans chunks), and every
    request's steps agree with its lone run (logits within VL_BATCH_TOL: onnxruntime does not promise bitwise-equal
    kernels across batch shapes, see edgeqwen.runtime.agreement)."""
    from edgeqwen.runtime.agreement import compare_runs, step_logits
    from edgeqwen.runtime.batch import BatchEngine, stream_batched

    _, int4, _ = vl
    lone = Runner(int4)
    pngs = [_png(120, 160, seed=1), None, _png(200, 90, seed=2), None]
    questions = ["What is it?", "Name a colour.", "Describe it.", "Say hello."]
    jobs = []
    for png, q in zip(pngs, questions):
        content = q if png is None else [{"type": "image"}, {"type": "text", "text": q}]
        jobs.append((lone.encode(lone.apply_chat_template([{"role": "user", "content": content}])),
                     [png] if png else []))
    settings = [Sampling(max_new_tokens=n, ignore_eos=True, temperature=0.8, top_p=0.9, seed=i, keep_logits=True)
                for i, n in enumerate((20, 8, 30, 12))]
    want = [step_logits(lone.stream(ids, s, images=imgs)) for (ids, imgs), s in zip(jobs, settings)]
    engine = BatchEngine(Runner(int4), max_batch=2, prefill_chunk=16)
    try:
        handles = []
        for (ids, imgs), s in zip(jobs, settings):  # all submitted before any is read: they share steps
            expanded, prepared = engine.runner.vision.prepare(ids, imgs) if imgs else (ids, None)
            handles.append(engine.submit(expanded, s, prepared=prepared))
        got = [step_logits(h) for h in handles]
        # stream_batched (what a lone caller uses) takes the images itself
        again = step_logits(stream_batched(engine, jobs[0][0], settings[0], images=jobs[0][1]))
    finally:
        engine.close()
    agreements = [compare_runs(*w, *g, VL_BATCH_TOL, greedy=False) for w, g in zip(want + want[:1], got + [again])]
    assert all(a.ok for a in agreements), [a.summary() for a in agreements]
    assert all(len(g[1]) == len(w[1]) for w, g in zip(want, got))  # every request ran to its own length
    assert engine.batch_tokens > engine.steps


def test_auto_mixed_precision_measures_the_vl_decoder(artifacts, random_qwen2_vl):
    """mixed_precision: auto on a VL checkpoint: the sensitivity measurement runs on its decoder (q, k and v apart, as
    the builder's VL graph keeps them) and the plan it makes is the one the graph carries."""
    out = artifacts.get("qwen2.5-vl-3b-instruct/cpu-x86_64-auto-int4", random_qwen2_vl)
    manifest = json.loads((out / "manifest.json").read_text())
    sens = manifest["sensitivity"]
    kinds = {g["kind"] for g in sens["groups"]}
    assert {"attn/q_proj", "attn/k_proj", "attn/v_proj", "mlp/down_proj"} <= kinds and len(sens["groups"]) == 4 * 7
    assert "vision.onnx" in manifest["files"] and manifest["export"]["plan"]["vision"]["bits"] == 8


def test_images_without_pillow_say_how_to_get_it(monkeypatch):
    """The runtime profile has no Pillow (text artifacts never need it): an image then names the install."""
    png = _png(10, 10)
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImageError, match=r"pip install pillow"):
        load_image(png)


def test_build_ram_estimate_counts_the_vision_tower(random_qwen2_vl):
    from edgeqwen.checkpoint import inspect_checkpoint
    from edgeqwen.memory import parameter_count

    cfg = inspect_checkpoint(random_qwen2_vl).config
    text_only = {k: v for k, v in cfg.items() if k != "vision_config"}
    # 4 blocks of (64x192 + 64x64 + 2x64x128 + 128x64) + merger 256x256 + 256x128 + patch embedding 1176x64
    assert parameter_count(cfg) - parameter_count(text_only) == 4 * (64 * 192 + 64 * 64 + 3 * 64 * 128) + 256 * 256 + 256 * 128 + 1176 * 64
