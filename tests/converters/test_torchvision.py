"""converters.torchvision: strict merge, preset inference, weights loading offline."""

from optional import skip_module_without_torch

skip_module_without_torch()

import jax
import numpy as np
import pytest
import torch
import torchvision

from affjax.checkpoint import load_variables, save_variables
from affjax.models import UnknownModelError
from converters.torchvision import ConversionError, WeightsError, convert, load


def _logits(module, variables, size=32):
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    return np.asarray(jax.jit(module.apply)(variables, x))


def test_preset_and_num_classes_inferred_from_instance():
    torch.manual_seed(0)
    model = torchvision.models.resnet34(num_classes=10).eval()
    module, variables = convert(model)
    assert module.stage_sizes == (3, 4, 6, 3) and module.num_classes == 10
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
    got = np.asarray(jax.jit(module.apply)(variables, x.permute(0, 2, 3, 1).numpy()))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(want).max())


def test_strict_merge_lists_missing_unexpected_misshaped():
    model = torchvision.models.resnet18().eval()
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["layer1.0.bn1.running_var"]
    state["fc.weight"] = torch.zeros(1000, 7)

    class Fake(torch.nn.Module):
        def state_dict(self):
            return state

    with pytest.raises(ConversionError) as err:
        convert(Fake(), "resnet18")
    msg = str(err.value)
    assert "missing (1): layer1.0.bn1.running_var" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "mis-shaped (1): fc.weight" in msg


def test_unsupported_instance_is_a_clear_error():
    # A class of its own: every torchvision classifier may get a port.
    class Unported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

    with pytest.raises(ConversionError, match="no Flax port for torch class Unported"):
        convert(Unported())


def test_load_random_is_seeded():
    a, b = load("squeezenet1_1", "random", seed=3), load("squeezenet1_1", "random", seed=3)
    c = load("squeezenet1_1", "random", seed=4)
    la, lb, lc = (_logits(m.module, m.variables, 64) for m in (a, b, c))
    np.testing.assert_array_equal(la, lb)
    assert not np.allclose(la, lc)
    assert a.info["weights"] == "random" and a.info["depth"] == len(
        list(a.torch_model.named_modules())
    )


def test_load_state_dict_path(tmp_path):
    torch.manual_seed(11)
    model = torchvision.models.get_model("resnet18").eval()
    path = tmp_path / "r18.pt"
    torch.save(model.state_dict(), path)
    loaded = load("resnet18", str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
    got = np.asarray(jax.jit(loaded.module.apply)(loaded.variables, x.permute(0, 2, 3, 1).numpy()))
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
    with pytest.raises(WeightsError, match="not found"):
        load("resnet18", str(tmp_path / "missing.pt"))
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alex.pt")
    with pytest.raises(WeightsError, match="does not fit resnet18"):
        load("resnet18", str(tmp_path / "alex.pt"))


def test_pretrained_weights_offline_say_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: a download would be needed

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError, match="--weights random"):
        load("resnet18", "IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="unknown weights 'IMAGENET9K'"):
        load("resnet18", "IMAGENET9K")
    with pytest.raises(UnknownModelError, match="resnet18"):
        load("resnet81", "random")


def test_variables_round_trip_without_torch(tmp_path):
    loaded = load("resnet18", "random", seed=1)
    save_variables(
        tmp_path / "r.msgpack", "resnet18", loaded.module, loaded.variables, meta=loaded.info
    )
    name, module, variables, meta = load_variables(tmp_path / "r.msgpack")
    assert name == "resnet18" and meta["weights"] == "random"
    np.testing.assert_array_equal(
        _logits(module, variables), _logits(loaded.module, loaded.variables)
    )
