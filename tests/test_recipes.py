"""Recipe/target schema: every shipped file loads; bad files fail naming file and key."""

from __future__ import annotations

import textwrap

import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.recipe import known_recipes, load_recipe
from edgeqwen.targets import known_targets, load_target

from .helpers.recipes import GOOD_RECIPE

GOOD = GOOD_RECIPE


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_every_shipped_recipe_and_target_loads():
    names = known_recipes()
    assert len(names) >= 24
    for model in ("qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b"):
        for target in ("cpu-x86_64", "cpu-arm64"):
            for prec in ("int4", "int8"):
                assert f"{model}/{target}-{prec}" in names
    for name in names:
        r = load_recipe(name)
        assert r.recipe.name == name
        assert name.split("/")[1].startswith(r.target.name), f"{name}: file name does not start with its target"
        assert name.endswith(r.recipe.precision.value)
    for t in known_targets():
        assert load_target(t).name == t


def test_good_recipe_file_resolves_target_defaults(tmp_path):
    r = load_recipe(str(write(tmp_path, GOOD)))
    assert r.block_size == 32 and r.accuracy_level == 4
    assert r.recipe.accuracy.max_kld == 0.05


@pytest.mark.parametrize(
    "text, expect",
    [
        (GOOD + "colour: blue\n", "unknown key 'colour'"),
        (GOOD.replace("block_size: 32", "block_sise: 32"), "quantization.block_sise"),
        (GOOD.replace("block_size: 32", "block_size: big"), "expected an integer"),
        (GOOD.replace("block_size: 32", "block_size: 48"), "block_size 48 must be one of"),
        (GOOD.replace("algorithm: rtn", "algorithm: magic"), "unknown value 'magic'; known: autoround, gptq, hqq, k_quant, rtn"),
        (GOOD.replace("target: cpu-x86_64", "target: toaster"), "unknown target 'toaster'"),
        (GOOD.replace("precision: int4", "precision: fp16"), "precision 'fp16' is not supported by target 'cpu-x86_64'"),
        (GOOD.replace("version: 1", "version: 7"), "schema version 7"),
        (GOOD.replace("model: embedded:tiny-qwen2\n", ""), "missing required key 'model'"),
    ],
)
def test_bad_recipe_names_file_and_key(tmp_path, text, expect):
    p = write(tmp_path, text)
    with pytest.raises(EdgeQwenError) as info:
        load_recipe(str(p))
    msg = str(info.value)
    assert expect in msg
    assert str(p) in msg


def test_malformed_yaml_reports_line(tmp_path):
    p = write(tmp_path, "version: 1\nmodel: [unclosed\ntarget: cpu-x86_64\n")
    with pytest.raises(EdgeQwenError) as info:
        load_recipe(str(p))
    assert "malformed YAML" in str(info.value) and f"{p}, line" in str(info.value)


def test_unknown_recipe_name_lists_how_to_find_them():
    with pytest.raises(EdgeQwenError, match="unknown recipe 'nope/x'"):
        load_recipe("nope/x")


def test_a_recipe_file_outside_the_recipe_folders_keeps_its_model_folder_in_its_name(tmp_path):
    """The name becomes the artifact's and the served model's: "cpu" alone says nothing of the model."""
    model = tmp_path / "mine" / "qwen2.5-0.5b-instruct"
    model.mkdir(parents=True)
    (model / "_model.yaml").write_text("model: embedded:tiny-qwen2\n")
    (model / "cpu.yaml").write_text("version: 1\nextends: _model.yaml\ntarget: cpu-x86_64\nprecision: int4\n")
    assert load_recipe(str(model / "cpu.yaml")).recipe.name == "qwen2.5-0.5b-instruct/cpu"
    assert load_recipe(str(write(tmp_path, GOOD, "loose.yaml"))).recipe.name == "loose"  # no model folder: its stem


def test_extends_shares_defaults_and_the_recipe_wins(tmp_path):
    (tmp_path / "_model.yaml").write_text("model: embedded:tiny-qwen3\ngeneration: {temperature: 0.6, top_k: 20}\n")
    child = write(tmp_path, "version: 1\nextends: _model.yaml\ntarget: cpu-x86_64\nprecision: int8\n"
                            "generation: {top_k: 5}\n", "child.yaml")
    r = load_recipe(str(child)).recipe
    assert r.model == "embedded:tiny-qwen3" and (r.generation.temperature, r.generation.top_k) == (0.6, 5)
    (tmp_path / "_loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: _loop.yaml\n")
    with pytest.raises(EdgeQwenError, match="extends loops back"):
        load_recipe(str(tmp_path / "loop2.yaml"))
    with pytest.raises(EdgeQwenError, match="extends names a file that does not exist"):
        load_recipe(str(write(tmp_path, "version: 1\nextends: _nope.yaml\n", "bad.yaml")))
    assert not any(name.split("/")[-1].startswith("_") for name in known_recipes())  # bases are not recipes
