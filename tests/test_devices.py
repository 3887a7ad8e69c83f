"""--device on every command that runs a model (deeprank.devices.resolve_device, cli, api)."""

import pytest
import torch

from deeprank import cli
from deeprank.api import model_on
from deeprank.devices import resolve_device
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import save_checkpoint

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "CPU", "", "tpu:0"):
        with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda"):
            resolve_device(bad)


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device(name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path_factory.mktemp("dev") / "ckpt", MultiScaleNet(in_channels=1, embedding_dim=8)
    )


def test_model_on_loads_a_checkpoint_where_asked_and_leaves_a_model_alone(checkpoint):
    model = model_on(checkpoint, "cpu")
    assert next(model.parameters()).device.type == "cpu" and model.checkpoint_dir == checkpoint.resolve()
    given = MultiScaleNet(in_channels=1, embedding_dim=8)
    assert model_on(given) is given


COMMANDS = {
    "embed": lambda ck, f, o: ["embed", "-m", ck, f, "-o", o / "e", "--no-progress"],
    "index": lambda ck, f, o: ["index", "-m", ck, f, "-o", o / "i", "--no-progress"],
    "evaluate": lambda ck, f, o: [
        "evaluate",
        "-m",
        ck,
        f,
        "-o",
        o / "v",
        "--no-progress",
        "--crops",
        "4",
        "-k",
        "3",
    ],
}


@pytest.fixture
def folder(tmp_path):
    from imagefiles import write_image

    for c, colour in enumerate([(250, 250, 250), (10, 10, 10)]):
        for i in range(7):  # evaluate's recall@10 needs more than 10 images
            write_image(tmp_path / "imgs" / f"c{c}" / f"{i}.png", color=tuple(v + i for v in colour))
    return tmp_path / "imgs"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_commands_run_on_cpu_and_refuse_bad_devices(capsys, checkpoint, folder, tmp_path, command):
    argv = [str(a) for a in COMMANDS[command](checkpoint, folder, tmp_path)]
    assert cli.main([*argv, "--device", "cpu"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    bad = ["gpu"] + (["cuda"] if not torch.cuda.is_available() else [])
    for device in bad:
        assert cli.main([*argv, "--device", device]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("deeprank: error: ") and "device" in err[0]


def test_query_serve_and_demo_take_device(capsys, checkpoint, folder, tmp_path):
    assert (
        cli.main(["index", "-m", str(checkpoint), str(folder), "-o", str(tmp_path / "i"), "--no-progress"])
        == 0
    )
    query = str(folder / "c0" / "0.png")
    assert cli.main(["query", str(tmp_path / "i"), query, "-k", "1", "--device", "cpu"]) == 0
    assert cli.main(["query", str(tmp_path / "i"), query, "--device", "gpu"]) == 2
    capsys.readouterr()
    for argv in (["serve", str(tmp_path / "i")], ["demo", "-o", str(tmp_path / "d"), "--quick"]):
        assert cli.main([*argv, "--device", "tpu"]) == 2
        assert "device must be 'auto', 'cpu' or 'cuda[:N]'" in capsys.readouterr().err
