"""The rest of the small Qwen family: Coder's fill-in-the-middle through /v1/completions and the runner, and the
recipes' own system prompts (Qwen2.5-Math's step-by-step instruction)."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest

from edgeqwen.build import BuildOptions, build
from edgeqwen.recipe import known_recipes, load_recipe
from edgeqwen.runtime import Runner
from edgeqwen.tiny import FIM_TOKENS, TinySpec, create_tiny_qwen

from tests.helpers.serving import client, serving

FP32 = """\
version: 1
model: embedded:tiny-qwen2
target: cpu-x86_64
precision: fp32
context_length: 512
generation: {{temperature: 0.7, top_p: 0.8, top_k: 20, repetition_penalty: 1.1{extra}}}
"""


@pytest.fixture(scope="module")
def coder(tmp_path_factory):
    """A random-weight Qwen2 whose tokenizer carries Qwen2.5-Coder's FIM tokens, built to an fp32 artifact."""
    root = tmp_path_factory.mktemp("coder")
    ckpt = create_tiny_qwen(root / "ckpt", TinySpec(family="qwen2", fim=True))
    (root / "r.yaml").write_text(FP32.format(extra=""))
    return build(BuildOptions(str(root / "r.yaml"), root / "models" / "coder", model=str(ckpt), evaluate=False))


def test_family_recipes_are_shipped():
    names = set(known_recipes())
    for model in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-3b-instruct",
                  "qwen2.5-math-1.5b-instruct"):
        assert {f"{model}/cpu-x86_64-int4", f"{model}/cpu-arm64-int4", f"{model}/cpu-x86_64-int8"} <= names
    math = load_recipe("qwen2.5-math-1.5b-instruct/cpu-x86_64-int4").recipe
    assert math.generation.system_prompt.endswith("within \\boxed{}.") and math.context_length == 4096
    assert load_recipe("qwen2.5-coder-1.5b-instruct/cpu-x86_64-int4").recipe.generation.repetition_penalty == 1.1


def test_fill_in_the_middle_through_completions_and_the_runner(coder):
    runner = Runner(coder)
    assert all(runner.tokenizer.token_to_id(t) is not None for t in FIM_TOKENS)
    prefix, suffix = "def add(a, b):\n    ", "\n    return result\n"
    prompt = runner.fim_prompt(prefix, suffix)
    assert prompt == f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    expected = runner.generate(runner.encode(prompt), runner.default_sampling(max_new_tokens=12)).text
    with serving(coder.parent) as server:
        r = client(server).completions.create(model=client(server).models.list().data[0].id, prompt=prefix,
                                              suffix=suffix, max_tokens=12)
    assert r.choices[0].text == expected and r.usage.prompt_tokens == len(runner.encode(prompt))
    proc = subprocess.run([sys.executable, str(coder / "runner.py"), str(coder), "-p", prefix, "--suffix", suffix,
                           "--max-new-tokens", "12"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.rstrip("\n") == expected.rstrip("\n"), proc.stderr


def test_suffix_on_a_model_without_fim_tokens_is_400(artifacts, trained_qwen2, tmp_path):
    import shutil

    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2), tmp_path / "m")
    with serving(tmp_path / "m") as server:
        c = client(server)
        with pytest.raises(openai.BadRequestError, match="fill-in-the-middle"):
            c.completions.create(model=c.models.list().data[0].id, prompt="def f():", suffix="\n", max_tokens=4)


def test_a_recipes_system_prompt_reaches_the_runner_and_the_server(tmp_path):
    (tmp_path / "r.yaml").write_text(FP32.format(extra=', system_prompt: "Please reason step by step."'))
    art = build(BuildOptions(str(tmp_path / "r.yaml"), tmp_path / "models" / "math", evaluate=False))
    runner = Runner(art)
    prompt = runner.apply_chat_template([{"role": "user", "content": "1+1?"}])
    assert "<|im_start|>system\nPlease reason step by step.<|im_end|>" in prompt
    own = runner.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}])
    assert "Please reason" not in own and "Be brief." in own  # a conversation's own system message wins
    assert json.loads((art / "manifest.json").read_text())["recipe"]["generation"]["system_prompt"]
