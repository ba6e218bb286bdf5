"""BigGAN-deep through pytorch-pretrained-biggan, with a tiny randomly initialised config."""

import json

import pytest
import torch

from regprim import ExplainConfig, SolverConfig, explain
from regprim.generators.biggan import biggan, cached_files, truncated_sampler

pytest.importorskip("pytorch_pretrained_biggan")
TINY = {"channel_width": 4}


@pytest.fixture(scope="module")
def tiny():
    return biggan(config=TINY)


def test_layers_and_default(tiny):
    assert tiny.layer == "generator.layers.0"
    assert tiny.layers[0] == "generator.layers.0" and len(tiny.layers) == 11
    assert tiny.shapes() == ((64, 4, 4), (3, 128, 128))
    assert tiny.cut_at("generator.layers.3").shapes()[0] == (32, 16, 16)


@pytest.mark.parametrize("layer", ["generator.layers.0", "generator.layers.8"])
def test_split_reproduces_the_whole_model(tiny, layer):
    gen = tiny.cut_at(layer)
    code = gen.sample_codes(2, 0, class_index=207)
    with torch.no_grad():
        whole = gen.model(code[:, :128], code[:, 128:], 0.4)
        split = gen.g(gen.d(code), code)
    torch.testing.assert_close(split, whole)


def test_g_sees_the_code(tiny):
    code = tiny.sample_codes(1, 0, class_index=1)
    other = tiny.sample_codes(1, 0, class_index=2)
    with torch.no_grad():
        f = tiny.d(code)
        assert not torch.allclose(tiny.g(f, code), tiny.g(f, other))


def test_truncated_codes_and_class_balance():
    codes = truncated_sampler(0.4)(
        3000, torch.Generator().manual_seed(0), torch.arange(3000) % 1000
    )
    assert codes[:, :128].abs().max() <= 0.8
    assert torch.equal(codes[:, 128:].sum(0), torch.full((1000,), 3.0))


def test_end_to_end_tiny_on_cpu(tiny):
    cfg = ExplainConfig(
        model="biggan-deep-128",
        class_index=207,
        n=3,
        baseline_count=64,
        solver=SolverConfig(or_steps=3),
    )
    run = explain(cfg, generator=tiny, progress=False)
    assert run.summary["universal_matching_max_rel_residual"] < 1e-4
    assert run.summary["class_index"] == 207
    assert run.components.shape == (8, 64, 4, 4)
    assert {m.name for m in run.metrics} >= {"code_influence"}
    influence = next(m for m in run.metrics if m.name == "code_influence")
    assert influence.details["sees_code"] and influence.value > 0


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTORCH_PRETRAINED_BIGGAN_CACHE", str(tmp_path))
    monkeypatch.delenv("REGPRIM_BIGGAN_DIR", raising=False)
    assert cached_files("biggan-deep-128") is None
    with pytest.raises(FileNotFoundError, match="biggan-deep-128-pytorch_model.bin.*--weights"):
        biggan()
    with pytest.raises(FileNotFoundError, match="lacks \\['config.json', 'pytorch_model.bin'\\]"):
        biggan(weights=tmp_path)


def test_weights_from_a_local_folder(tmp_path, tiny):
    from pytorch_pretrained_biggan import BigGANConfig

    cfg = BigGANConfig()
    cfg.channel_width = 4
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    torch.save(tiny.model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = biggan(weights=tmp_path)
    code = loaded.sample_codes(1, 3, class_index=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.g(loaded.d(code), code), tiny.g(tiny.d(code), code))
    torch.save({"generator.gen_z.bias": torch.zeros(3)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="does not match the expected architecture"):
        biggan(weights=tmp_path)


@pytest.mark.parametrize(("resolution", "layers"), [(128, 11), (256, 13), (512, 15)])
def test_each_resolution_has_its_own_architecture(resolution, layers):
    gen = biggan(resolution=resolution, config=TINY)
    assert len(gen.layers) == layers
    code = gen.sample_codes(1, 0, class_index=1)
    with torch.no_grad():
        assert gen.g(gen.d(code), code).shape == (1, 3, resolution, resolution)


def test_classes_by_name(tiny):
    assert tiny.class_index("golden retriever") == 207
    assert tiny.class_index("Golden Retriever") == tiny.class_index("207") == 207
    assert tiny.class_index("tench") == 0
    with pytest.raises(ValueError, match="names several ImageNet classes: 134 .*517"):
        tiny.class_index("crane")
    with pytest.raises(ValueError, match="did you mean \\['golden retriever'"):
        tiny.class_index("golden retriver")
