"""Bad input to the converter: clear errors naming the file or tensor (and both shapes), nothing left
behind at --out, and an existing --out kept unless --force."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import hf_builders
from mvlm_jax.convert.hf import main as convert_main


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hf") / "llama"
    hf_builders.llama(directory, seed=1)
    return directory


def copy_with(hf_dir: Path, target: Path, edit) -> Path:
    target.mkdir()
    (target / "config.json").write_text((hf_dir / "config.json").read_text())
    tensors = load_file(str(hf_dir / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    return target


def run_import(capsys, hf: Path, out: Path, *extra: str) -> tuple[int, str]:
    code = convert_main(["import", "--hf", str(hf), "--out", str(out), *extra])
    return code, capsys.readouterr().err


def assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_wrongly_shaped_tensor_names_it_and_both_shapes(tmp_path, hf_dir, capsys):
    name = "model.layers.1.mlp.up_proj.weight"
    bad = copy_with(hf_dir, tmp_path / "bad", lambda t: t.update({name: np.zeros((81, 48), np.float32)}))
    code, err = run_import(capsys, bad, tmp_path / "out")
    assert code == 1
    assert name in err and "[81, 48]" in err and "[80, 48]" in err
    assert_nothing_left(tmp_path / "out")


def test_missing_tensor_is_named(tmp_path, hf_dir, capsys):
    bad = copy_with(hf_dir, tmp_path / "bad", lambda t: t.pop("model.norm.weight"))
    code, err = run_import(capsys, bad, tmp_path / "out")
    assert code == 1 and "missing tensor model.norm.weight" in err and "[48]" in err
    assert_nothing_left(tmp_path / "out")


def test_unexpected_tensor_is_named(tmp_path, hf_dir, capsys):
    bad = copy_with(hf_dir, tmp_path / "bad", lambda t: t.update({"model.extra.bias": np.zeros(3, np.float32)}))
    code, err = run_import(capsys, bad, tmp_path / "out")
    assert code == 1 and "unexpected tensor" in err and "model.extra.bias [3]" in err
    assert_nothing_left(tmp_path / "out")


def test_unknown_model_type(tmp_path, hf_dir, capsys):
    bad = copy_with(hf_dir, tmp_path / "bad", lambda t: None)
    config = json.loads((bad / "config.json").read_text())
    config["model_type"] = "gpt2"
    (bad / "config.json").write_text(json.dumps(config))
    code, err = run_import(capsys, bad, tmp_path / "out")
    assert code == 1 and "unknown model_type 'gpt2'" in err and str(bad / "config.json") in err
    assert_nothing_left(tmp_path / "out")


def test_invalid_json_names_file_and_line(tmp_path, hf_dir, capsys):
    bad = copy_with(hf_dir, tmp_path / "bad", lambda t: None)
    (bad / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}')
    code, err = run_import(capsys, bad, tmp_path / "out")
    assert code == 1 and f"{bad / 'config.json'}:3" in err
    assert_nothing_left(tmp_path / "out")


def test_truncated_safetensors_names_the_file(tmp_path, hf_dir, capsys):
    bad = copy_with(hf_dir, tmp_path / "bad", lambda t: None)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, err = run_import(capsys, bad, tmp_path / "out")
    assert code == 1 and str(bad / "model.safetensors") in err
    assert_nothing_left(tmp_path / "out")


def test_export_refuses_existing_output_and_vision_only_checkpoints(tmp_path, capsys):
    import hf_builders as builders
    builders.clip_vision(tmp_path / "clip")
    assert convert_main(["import", "--hf", str(tmp_path / "clip"), "--out", str(tmp_path / "ckpt")]) == 0
    code = convert_main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")])
    assert code == 1 and "vision-only" in capsys.readouterr().err
    assert_nothing_left(tmp_path / "hf")
    (tmp_path / "hf").mkdir()
    code = convert_main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")])
    assert code == 1 and "--force" in capsys.readouterr().err


def test_export_refuses_a_tower_without_class_token(tmp_path, capsys):
    """transformers' CLIPVisionModel always has a class token (num_patches + 1 position rows), so a tower
    without one (the demo preset) has no Hugging Face form: refused, naming what to do instead; nor is such
    a tower ever labelled as a hub tower."""
    import dataclasses

    from mvlm_jax.checkpoint import CONFIG_FILE
    from mvlm_jax.convert.hf_config import known_tower
    from mvlm_jax.models.config import LLAMA_PRESETS, PROJECTOR_PRESETS, VISION_PRESETS, VLMConfig, to_dict

    config = VLMConfig(VISION_PRESETS["demo"], PROJECTOR_PRESETS["ldp"], LLAMA_PRESETS["tiny"])
    (tmp_path / "ckpt").mkdir()  # the config alone: the export refuses before it reads any weights
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(to_dict(config)))
    code = convert_main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")])
    error = capsys.readouterr().err
    assert code == 1 and "no class token" in error and "mvlm export" in error
    assert_nothing_left(tmp_path / "hf")
    assert known_tower(VISION_PRESETS["l14_336"]) == "openai/clip-vit-large-patch14-336"
    assert known_tower(dataclasses.replace(VISION_PRESETS["l14_336"], class_token=False)) is None


def test_missing_files(tmp_path, hf_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_import(capsys, empty, tmp_path / "out")
    assert code == 1 and "config.json: missing" in err
    (empty / "config.json").write_text((hf_dir / "config.json").read_text())
    (empty / "pytorch_model.bin").write_bytes(b"pickle")
    code, err = run_import(capsys, empty, tmp_path / "out")
    assert code == 1 and "pytorch_model.bin" in err and "pickle" in err
    assert_nothing_left(tmp_path / "out")


def test_existing_output_is_kept_without_force(tmp_path, hf_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_import(capsys, hf_dir, out)
    assert code == 1 and "--force" in err and (out / "keep.txt").read_text() == "mine"
    # A failing forced run leaves the old output untouched too.
    bad = copy_with(hf_dir, tmp_path / "bad", lambda t: t.pop("lm_head.weight"))
    code, _ = run_import(capsys, bad, out, "--force")
    assert code == 1 and (out / "keep.txt").read_text() == "mine"
    code, _ = run_import(capsys, hf_dir, out, "--force")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "model_config.json").is_file()


def test_module_and_console_entry_points(tmp_path, hf_dir):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "mvlm_jax.convert.hf", "import", "--hf", str(hf_dir),
                           "--out", str(tmp_path / "ckpt")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    mvlm = Path(sys.executable).with_name("mvlm")
    info = subprocess.run([str(mvlm), "info", "--ckpt", str(tmp_path / "ckpt")], capture_output=True, text=True,
                          env=env)
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["kind"] == "llm" and summary["config"]["hidden_size"] == 48
    assert summary["parameters"] == 97 * 48 * 2 + 2 * (4 * 48 * 48 + 3 * 48 * 80 + 2 * 48) + 48
    again = subprocess.run([str(mvlm), "convert", "export", "--ckpt", str(tmp_path / "ckpt"), "--out",
                            str(tmp_path / "hf_again"), "--dtype", "bfloat16"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "hf_again" / "config.json").read_text())["torch_dtype"] == "bfloat16"
