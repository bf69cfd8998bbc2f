"""PEFT and mlx-lm folders converted on load: bit for bit what llama.cpp's convert_lora_to_gguf.py writes
(the references in tests/fixtures/adapters, made by scripts/make_adapter_fixtures.py from folders that
`peft` wrote), the scales PEFT applies, the conversion cache, and every refusal by name."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from engine.default_model import default_model_path
from engine.errors import InvalidRequest
from engine.llama.adapters.base_model import AdapterBase
from engine.llama.adapters.files import AdapterDirectories
from engine.llama.adapters.loading import AdapterFileChecker, CheckedAdapterFile
from tests.peft_factory import FIXTURES, peft_config, peft_tensors, write_mlx_folder, write_peft_folder


@pytest.fixture(scope="module")
def base() -> AdapterBase:
    return AdapterBase.from_model_file(default_model_path())


@pytest.fixture
def checker(tmp_path: Path, base: AdapterBase) -> AdapterFileChecker:
    root = tmp_path / "adapters"
    shutil.copytree(FIXTURES, root)
    return AdapterFileChecker(AdapterDirectories([root]), base, tmp_path / "cache")


def tensors(data: bytes, tmp: Path) -> tuple[dict[str, np.ndarray], float]:
    path = tmp / "read.gguf"
    path.write_bytes(data)
    reader = GGUFReader(path)
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    return {t.name: np.array(t.data) for t in reader.tensors}, alpha


def reference(name: str, tmp: Path) -> tuple[dict[str, np.ndarray], float]:
    return tensors((FIXTURES / "reference" / f"{name}.gguf").read_bytes(), tmp)


def assert_bit_equal(checked: CheckedAdapterFile, ref: str, tmp: Path) -> None:
    ours, our_alpha = tensors(checked.file.data, tmp)
    theirs, their_alpha = reference(ref, tmp)
    assert our_alpha == their_alpha
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype == np.float32, name  # F32: the converter's default
        assert ours[name].shape == theirs[name].shape, name
        assert ours[name].tobytes() == theirs[name].tobytes(), name


@pytest.mark.parametrize(
    ("folder", "ref"), [("peft_lora", "peft_lora"), ("peft_rslora", "peft_rslora"), ("mlx_lora", "peft_lora")]
)
def test_folders_convert_bit_for_bit_as_llama_cpps_converter(
    checker: AdapterFileChecker, tmp_path: Path, folder: str, ref: str
) -> None:
    checked = checker.check("x", folder)
    assert checked.source_format == ("mlx-lm" if folder.startswith("mlx") else "peft")
    assert_bit_equal(checked, ref, tmp_path)
    assert checked.info.rank == 8 and checked.info.architecture == "llama"
    assert set(checked.info.target_modules) == {
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    }
    assert checked.warnings == ()  # trained on SmolLM2-135M-Instruct: the served model


def test_q_and_k_rows_are_permuted_and_nothing_else(checker: AdapterFileChecker, tmp_path: Path) -> None:
    """The reference differs from PEFT's raw B exactly where convert_hf_to_gguf.py permutes (q, k rows)."""
    from engine.llama.adapters.safetensors_file import read_safetensors

    raw = read_safetensors((FIXTURES / "peft_lora" / "adapter_model.safetensors").read_bytes(), "x")
    ours, _ = tensors(checker.check("x", "peft_lora").file.data, tmp_path)
    prefix = "base_model.model.model.layers.0."
    for module, gguf_name in [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k")]:
        b = raw[f"{prefix}{module}.lora_B.weight"]
        assert not np.array_equal(ours[f"blk.0.{gguf_name}.weight.lora_b"], b)  # permuted
        assert sorted(ours[f"blk.0.{gguf_name}.weight.lora_b"].ravel()) == sorted(b.ravel())  # the same rows
        assert np.array_equal(ours[f"blk.0.{gguf_name}.weight.lora_a"], raw[f"{prefix}{module}.lora_A.weight"])
    assert np.array_equal(ours["blk.0.attn_v.weight.lora_b"], raw[f"{prefix}self_attn.v_proj.lora_B.weight"])


def test_rslora_is_scaled_by_the_square_root_of_the_rank(checker: AdapterFileChecker, tmp_path: Path) -> None:
    """llama.cpp applies alpha/r: PEFT's rsLoRA scale alpha/√r needs alpha·√r written (llama.cpp's converter
    writes alpha unchanged: the bug vLLM and SGLang had)."""
    _, alpha = tensors(checker.check("x", "peft_rslora").file.data, tmp_path)
    assert alpha == pytest.approx(16 * math.sqrt(8))


def test_the_conversion_is_cached_by_the_source_files_hashes(checker: AdapterFileChecker, tmp_path: Path) -> None:
    first = checker.check("x", "peft_lora")
    assert not first.from_cache and set(first.source_sha256) == {"adapter_config.json", "adapter_model.safetensors"}
    second = checker.check("y", "peft_lora")
    assert second.from_cache and second.sha256 == first.sha256 and second.source_sha256 == first.source_sha256
    # a damaged cache file is converted again
    (cached,) = (tmp_path / "cache").glob("*.gguf")
    cached.write_bytes(cached.read_bytes()[:1000])
    third = checker.check("z", "peft_lora")
    assert not third.from_cache and third.sha256 == first.sha256
    # retrained (other bytes): another conversion
    root = checker.directories.roots[0]
    config = json.loads((root / "peft_lora" / "adapter_config.json").read_text())
    config["lora_alpha"] = 32
    (root / "peft_lora" / "adapter_config.json").write_text(json.dumps(config))
    fourth = checker.check("w", "peft_lora")
    assert not fourth.from_cache and fourth.sha256 != first.sha256 and fourth.info.alpha == 32


def test_rank_and_alpha_patterns_give_each_module_its_own_scale(checker: AdapterFileChecker, tmp_path: Path) -> None:
    root = checker.directories.roots[0]
    t = peft_tensors(rank=4, layers=(0,))
    v_key = "base_model.model.model.layers.0.self_attn.v_proj"
    t[f"{v_key}.lora_A.weight"] = t[f"{v_key}.lora_A.weight"][:2].copy()  # rank 2 for v (rank_pattern)
    t[f"{v_key}.lora_B.weight"] = t[f"{v_key}.lora_B.weight"][:, :2].copy()
    config = peft_config(rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 2})
    write_peft_folder(root / "patterns", config=config, tensors=t, bf16=False)
    ours, alpha = tensors(checker.check("p", "patterns").file.data, tmp_path)
    assert alpha == 8.0  # lora_alpha: what most modules use

    def applied(module: str, gguf_name: str) -> np.ndarray:  # llama.cpp's delta: (alpha / rank) · B @ A
        a, b = ours[f"blk.0.{gguf_name}.weight.lora_a"], ours[f"blk.0.{gguf_name}.weight.lora_b"]
        return (alpha / a.shape[0]) * (b.astype(np.float64) @ a)

    def peft(module: str, scale: float) -> np.ndarray:
        key = f"base_model.model.model.layers.0.{module}"
        return scale * (t[f"{key}.lora_B.weight"].astype(np.float64) @ t[f"{key}.lora_A.weight"])

    np.testing.assert_allclose(applied("self_attn.v_proj", "attn_v"), peft("self_attn.v_proj", 8 / 2), rtol=1e-6)
    np.testing.assert_allclose(applied("mlp.down_proj", "ffn_down"), peft("mlp.down_proj", 2 / 4), rtol=1e-6)
    np.testing.assert_allclose(applied("mlp.up_proj", "ffn_up"), peft("mlp.up_proj", 8 / 4), rtol=1e-6)


def test_another_base_model_is_a_warning(checker: AdapterFileChecker) -> None:
    root = checker.directories.roots[0]
    write_peft_folder(root / "llama3", config=peft_config(base_model_name_or_path="meta-llama/Llama-3.2-1B"))
    checked = checker.check("x", "llama3")
    assert len(checked.warnings) == 1 and "Llama-3.2-1B" in checked.warnings[0]


def _refused(checker: AdapterFileChecker, name: str, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        checker.check("x", name)


KEY = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("dora_config", "DoRA"),
        ("dora_tensor", "DoRA"),
        ("bias_config", "biases"),
        ("bias_tensor", "bias"),
        ("modules_to_save", "modules_to_save"),
        ("modules_to_save_tensor", "modules_to_save"),
        ("embeddings", "embeddings or the output layer"),
        ("embedding_key", "embeddings or the output layer"),
        ("layer_past_model", "layer 30 .* the served model has 30 layers"),
        ("wrong_shape", "576x1024 .* in the adapter but 576x576"),
        ("unequal_ranks", "lora_A of rank 4 but lora_B of rank 3"),
        ("missing_half", "no lora_B"),
        ("pickle", "pickle"),
        ("not_lora", "'LOHA' adapter"),
        ("no_config", "without adapter_config.json"),
        ("bad_json", "not valid JSON"),
        ("not_safetensors", "not a safetensors file"),
        ("int_tensor", "'I32'"),
        ("nan_weight", "NaN"),
        ("rank_zero", "rank 0"),
    ],
)
def test_peft_refusals_name_the_feature(checker: AdapterFileChecker, case: str, match: str) -> None:
    root = checker.directories.roots[0]
    folder = root / case
    t = peft_tensors(layers=(0,))
    config = peft_config()
    if case == "dora_config":
        config["use_dora"] = True
    elif case == "dora_tensor":
        t[f"{KEY}.lora_magnitude_vector"] = np.ones(576, np.float32)
    elif case == "bias_config":
        config["bias"] = "all"
    elif case == "bias_tensor":
        t[f"{KEY}.bias"] = np.ones(576, np.float32)
    elif case == "modules_to_save":
        config["modules_to_save"] = ["lm_head"]
    elif case == "modules_to_save_tensor":
        t["base_model.model.lm_head.modules_to_save.default.weight"] = np.ones((4, 4), np.float32)
    elif case == "embeddings":
        config["target_modules"] = ["embed_tokens", "q_proj"]
    elif case == "embedding_key":
        t["base_model.model.model.embed_tokens.lora_A.weight"] = np.ones((4, 49152), np.float32)
        t["base_model.model.model.embed_tokens.lora_B.weight"] = np.ones((576, 4), np.float32)
    elif case == "layer_past_model":
        t = peft_tensors(layers=(30,))
    elif case == "wrong_shape":
        t[f"{KEY}.lora_A.weight"] = np.ones((4, 1024), np.float32)
    elif case == "unequal_ranks":
        t[f"{KEY}.lora_B.weight"] = np.ones((576, 3), np.float32)
    elif case == "missing_half":
        del t[f"{KEY}.lora_B.weight"]
    elif case == "not_lora":
        config["peft_type"] = "LOHA"
    elif case == "nan_weight":
        t[f"{KEY}.lora_B.weight"][0, 0] = np.nan
    elif case == "rank_zero":
        config["r"] = 1
        t = {k: v[:0] if k.endswith("lora_A.weight") else v[:, :0] for k, v in t.items()}
        config["rank_pattern"] = {}
    write_peft_folder(folder, config=config, tensors=t, bf16=False)
    if case == "pickle":
        (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    elif case == "no_config":
        (folder / "adapter_config.json").unlink()
    elif case == "bad_json":
        (folder / "adapter_config.json").write_text("{not json")
    elif case == "not_safetensors":
        (folder / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    elif case == "int_tensor":
        data = (folder / "adapter_model.safetensors").read_bytes()
        (folder / "adapter_model.safetensors").write_bytes(data.replace(b'"F32"', b'"I32"', 1))
    _refused(checker, case, match)


@pytest.mark.parametrize(
    ("case", "match"), [("dora", "DoRA"), ("full", "'full' fine-tune"), ("magnitude", "DoRA"), ("other_arch", "'phi3'")]
)
def test_mlx_refusals_name_the_feature(checker: AdapterFileChecker, base: AdapterBase, case: str, match: str) -> None:
    root = checker.directories.roots[0]
    if case == "other_arch":
        phi = AdapterFileChecker(checker.directories, AdapterBase("phi3", base.tensor_shapes, 30, 9, 3))
        write_mlx_folder(root / case)
        with pytest.raises(InvalidRequest, match=match):
            phi.check("x", case)
        return
    extra = {"model.layers.0.self_attn.q_proj.m": np.ones(576, np.float32)} if case == "magnitude" else None
    write_mlx_folder(root / case, fine_tune_type=case if case in ("dora", "full") else "lora", extra=extra)
    _refused(checker, case, match)


def test_mlx_scale_is_used_as_is(checker: AdapterFileChecker, tmp_path: Path) -> None:
    root = checker.directories.roots[0]
    write_mlx_folder(root / "mlx", scale=3.0, rank=4)
    _, alpha = tensors(checker.check("x", "mlx").file.data, tmp_path)
    assert alpha == 12.0  # scale · r: llama.cpp's alpha / r is then mlx-lm's scale


def test_folder_files_may_not_link_outside_the_adapter_directories(checker: AdapterFileChecker, tmp_path: Path) -> None:
    root = checker.directories.roots[0]
    outside = write_peft_folder(tmp_path / "outside")
    inside = root / "linked"
    inside.mkdir()
    (inside / "adapter_config.json").symlink_to(outside / "adapter_config.json")
    (inside / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    _refused(checker, "linked", "outside the adapter directories")
    (root / "whole_link").symlink_to(outside)
    _refused(checker, "whole_link", "outside the adapter directories")
    # symlinks that stay inside (a Hugging Face cache snapshot's layout) are followed
    snapshot = root / "snapshot"
    snapshot.mkdir()
    blobs = root / "blobs"
    shutil.copytree(FIXTURES / "peft_lora", blobs)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        (snapshot / f).symlink_to(blobs / f)
    assert checker.check("x", "snapshot").source_format == "peft"


def test_folders_are_found_by_name_and_listed(checker: AdapterFileChecker) -> None:
    dirs = checker.directories
    assert dirs.find("peft_lora") == "peft_lora" and dirs.find("mlx_lora") == "mlx_lora"
    assert dirs.find("reference") is None  # a folder without adapter_config.json is no adapter
    assert dirs.find("../etc") is None and dirs.find("a\x00b") is None
    available = dirs.available()
    assert "peft_lora/" in available and "mlx_lora/" in available and "reference/peft_lora.gguf" in available
