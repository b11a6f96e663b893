"""A minimal valid recipe, as YAML text: tests of recipe errors change one key of it."""

GOOD_RECIPE = """\
version: 1
model: embedded:tiny-qwen2
target: cpu-x86_64
precision: int4
quantization: {algorithm: rtn, block_size: 32}
accuracy: {max_kld: 0.05}
"""
