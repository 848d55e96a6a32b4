"""training.precision: "auto" picks bfloat16 only where the CPU computes in it."""

import pytest

from keras_transformer_pipelines.config import ConfigError, recipe_from_dict
from keras_transformer_pipelines.precision import cpu_flags, resolve

X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma {extra}\nbugs\t\t: none\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("avx512f avx512_bf16", "mixed_bfloat16"),  # Cooper Lake, Zen 4
        ("amx_tile amx_bf16", "mixed_bfloat16"),  # Sapphire Rapids
        ("avx512f avx512bw", "float32"),  # AVX-512 without bf16 arithmetic
        ("", "float32"),
    ],
)
def test_auto_follows_the_cpus_bf16_flags(tmp_path, extra, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86.format(extra=extra))
    assert resolve("auto", cpu_flags(cpuinfo)) == expected


def test_flags_of_arm64_and_of_no_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(cpuinfo) == {"fp", "asimd", "bf16", "i8mm"}
    assert resolve("auto", cpu_flags(cpuinfo)) == "float32"  # auto reads the x86 flags only
    assert cpu_flags(tmp_path / "missing") == set()


def test_named_precisions_are_kept_and_others_refused():
    for name in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert resolve(name, {"avx512_bf16"}) == name
    base = {"data": {"train": "t.tsv", "max_tokens": 256}}
    with pytest.raises(ConfigError, match="training.precision' must be one of"):
        recipe_from_dict({**base, "training": {"precision": "bfloat16"}})
    with pytest.raises(ConfigError, match="unknown key 'training.mixed_precision'"):
        recipe_from_dict({**base, "training": {"mixed_precision": True}})
