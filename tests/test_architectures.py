"""The architecture registry is the one place that knows a family: every entry makes a tiny fixture, loads its
PyTorch reference, names its template and onnxruntime-genai type; no other module names an architecture."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from edgeqwen.architectures import architecture_of, architectures, by_family, get_architecture, load_reference
from edgeqwen.tiny import TinySpec, chat_template, create_tiny_qwen

PACKAGE = Path(__file__).resolve().parent.parent / "edgeqwen"


@pytest.mark.parametrize("arch", architectures(), ids=lambda a: a.family)
def test_every_registered_architecture_makes_a_fixture_and_loads_its_reference(arch, tmp_path):
    ckpt = create_tiny_qwen(tmp_path / arch.family, TinySpec(family=arch.family, num_hidden_layers=1))
    model = load_reference(ckpt)
    assert type(model).__name__ == arch.hf_class
    assert not model.training
    assert "<|im_start|>" in chat_template(arch.family)
    # onnxruntime-genai's builder writes `type` as the class name before "For", lowercased (builders/base.py)
    assert arch.genai_type == arch.hf_class[: arch.hf_class.find("For")].lower()
    if arch.vision:
        assert (ckpt / "preprocessor_config.json").exists()
        assert arch.transformers_class("vision").__name__.endswith("PretrainedModel")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="known: .*qwen3"):
        by_family("llama")
    with pytest.raises(KeyError, match="known: .*Qwen3ForCausalLM"):
        get_architecture("LlamaForCausalLM")
    assert architecture_of({}).hf_class == architecture_of({"architectures": ["Qwen2ForCausalLM"]}).hf_class


def _code_names(path: Path) -> set[str]:
    """Identifiers, imported names and string constants of a module's code (docstrings and comments left out)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.alias):
            out.add(n.name.rsplit(".", 1)[-1])
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            out.update(re.findall(r"[\w.-]+", n.value))
    return out


def test_no_module_outside_the_registry_names_an_architecture():
    names = {a.hf_class for a in architectures()} | {a.torch_class for a in architectures()} | {
        a.family for a in architectures()}
    names -= {"AutoModelForCausalLM"}  # transformers' generic loader, not an architecture
    offenders = {str(p.relative_to(PACKAGE)): sorted(_code_names(p) & names) for p in PACKAGE.rglob("*.py")
                 if p.name != "architectures.py"}
    assert not {k: v for k, v in offenders.items() if v}, "architecture names outside edgeqwen/architectures.py"
