"""Image+text accuracy of a Qwen2.5-VL artifact against PyTorch: the whole path, from pixels to logits.

Two deterministic images of different shapes (a colour gradient and seeded noise, so no file is needed) go through
the artifact (numpy preprocessing, vision.onnx, embedding.onnx, the decoder with 3-D positions) and through
transformers (its own Qwen2VLImageProcessor with the artifact's settings, Qwen2_5_VLForConditionalGeneration); the
text after the images is a slice of the eval text. Scored: every position from the last image on (KLD, top-1), and
the image features themselves (relative error of the encoder's output).
"""

from __future__ import annotations

import numpy as np

from . import metrics

CONTINUATION_TOKENS = 64


def probe_images():
    from PIL import Image

    yy, xx = np.mgrid[0:150, 0:220]
    gradient = np.stack([xx * 255 // 219, yy * 255 // 149, (xx + yy) * 255 // 368], axis=-1).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (260, 120, 3), dtype=np.uint8)
    return [Image.fromarray(gradient), Image.fromarray(noise)]


def image_parity(runner, model, text_ids: list[int]) -> dict:
    import torch

    from ..export.vision_export import reference_image_processor

    vis = runner.vision
    c = vis.config
    start, pad, end = (runner.tokenizer.token_to_id(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"))
    images = probe_images()
    prompt = [start, pad, end] + text_ids[:8] + [start, pad, end] + text_ids[8:8 + CONTINUATION_TOKENS]
    ids, (feats, positions) = vis.prepare(prompt, images)
    cand = runner.score(ids, prepared=(feats, positions))
    inputs = reference_image_processor(c)(images=images, return_tensors="pt")
    with torch.inference_mode():
        ref_feats = model.model.visual(inputs["pixel_values"], inputs["image_grid_thw"]).float().numpy()
        out = model(input_ids=torch.tensor([ids]), pixel_values=inputs["pixel_values"],
                    image_grid_thw=inputs["image_grid_thw"], attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    ref = out.logits[0].float().numpy()
    last_image = max(i for i, t in enumerate(ids) if t == c.image_token_id)
    ref_s, cand_s = ref[last_image:-1], cand[last_image:-1]
    kld = metrics.token_kld(ref_s, cand_s)
    rel = float(np.linalg.norm(feats - ref_feats) / max(np.linalg.norm(ref_feats), 1e-12)) \
        if feats.shape == ref_feats.shape else float("inf")
    return {"images": len(images), "image_tokens": int(sum(t == c.image_token_id for t in ids)),
            "tokens": int(len(kld)), "kld_mean": float(kld.mean()), "kld_max": float(kld.max()),
            "top1": float((ref_s.argmax(-1) == cand_s.argmax(-1)).mean()), "feature_rel_error": rel,
            "logits_max_abs_diff": float(np.abs(ref - cand).max())}
