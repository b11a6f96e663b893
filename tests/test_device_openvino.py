"""OpenVINO on its own kernels: the openvino-cpu artifact's runner.py under onnxruntime-openvino (its own venv: the
wheel replaces plain onnxruntime) on this x86 CPU, against onnxruntime's CPU provider. Run by .ci/device_openvino.sh."""

from __future__ import annotations

import sys

import pytest

from edgeqwen.runtime.agreement import compare_runs

from .helpers.devices import OPENVINO_VENV, greedy_dump

pytestmark = [pytest.mark.device, pytest.mark.openvino]
# fp32 activations on both sides (accuracy level 0): measured max |logit diff| 1e-5 on tiny-qwen2
OPENVINO_TOL = 1e-3


def test_openvino_artifact_runs_on_the_openvino_ep_as_on_the_cpu(artifacts, trained_qwen2, tmp_path):
    python = OPENVINO_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no onnxruntime-openvino venv at {OPENVINO_VENV} (.ci/device_openvino.sh makes it)")
    art = artifacts.get("tiny-qwen2/openvino-cpu-int4", trained_qwen2)
    args = ("--prompts", "2", "--tokens", "24")
    toks, logits, meta, _ = greedy_dump([str(python)], art, tmp_path / "ov.npz", *args)
    assert meta["providers"][0] == "OpenVINOExecutionProvider" and not meta["notes"], meta  # chosen from the artifact
    ref_toks, ref_logits, ref_meta, _ = greedy_dump([sys.executable], art, tmp_path / "cpu.npz", *args,
                                                    "--provider", "cpu")
    for i in range(len(toks)):
        agreement = compare_runs(ref_logits[i], ref_toks[i], logits[i], toks[i], OPENVINO_TOL)
        print(f"OpenVINO (onnxruntime-openvino {meta['onnxruntime']}) vs CPU: {agreement.summary()}")
        assert agreement.ok, agreement.summary()
        # greedy text equal to the CPU run's, unless the tokens parted at a near-tie (the agreement says where)
        assert agreement.diverged_at is not None or meta["texts"][i] == ref_meta["texts"][i]
