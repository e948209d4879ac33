"""The command line: fast help, one-line usage errors with exit code 2, no half stores."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from layerscope.cli import main


def test_help_does_not_import_torch():
    code = "import sys; from layerscope.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


COMMANDS = ["record", "sweep", "rank", "report", "eval", "bench", "finetune", "testbed"]


def _help(argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_fits_on_a_screen_and_help_all_shows_every_option(command, monkeypatch, capsys):
    from layerscope.cli import build_parser

    argv = [command] if command else []
    short = _help([*argv, "--help"], monkeypatch, capsys)
    lines = short.splitlines()
    assert len(lines) <= 52, f"layerscope {command} --help is {len(lines)} lines"
    assert lines[0].startswith("usage: layerscope") and lines[0].endswith("[options]")
    everything = _help([*argv, "--help-all"], monkeypatch, capsys)
    parser = build_parser()
    if command:
        parser = parser._subparsers._group_actions[0].choices[command]
    flags = [a.option_strings[-1] for a in parser._actions if a.option_strings]
    missing = [flag for flag in flags if flag not in everything]
    assert not missing, f"--help-all lacks {missing}"
    folded = [g for g in parser._action_groups if getattr(g, "folded", False)]
    for group in folded:  # --help names every folded option, in one line per group
        assert all(a.option_strings[0] in short for a in group._group_actions)


def test_record_default_example_writes_complete_store(model_dir, tmp_path, capsys):
    out = tmp_path / "demo.zarr"
    assert main(["record", "--out", str(out), "--model", "random", "--frames", "5", "--steps", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "random weights" in printed and "complete:" in printed and "16 maps" in printed
    import layerscope

    ds = layerscope.open_run(out)
    assert ds.attrs["weights"] == "random" and ds.attrs["model_id"].startswith("layerscope-tiny-wan")


def _bad_image(tmp_path):
    path = tmp_path / "not-an-image.png"
    path.write_text("hello")
    return path


def _not_a_pipeline(tmp_path):
    path = tmp_path / "empty-model"
    path.mkdir()
    return path


def _unsupported_pipeline(tmp_path):
    path = tmp_path / "sd-model"
    path.mkdir()
    (path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "a cat runs", "--keywords", "dog"], "keyword 'dog' is not in the prompt"),
        (["--prompt", "a cat runs"], "--keywords is required"),
        (["--image", _bad_image], "not a readable image"),
        (["--image", "missing.png"], "no such file"),
        (["--model", _not_a_pipeline], "no model_index.json"),
        (["--model", _unsupported_pipeline], "supported: WanImageToVideoPipeline"),
        (["--model", "no/such/dir"], "no such directory"),
        (["--layers", "0-99"], "layer 8 is out of range"),
        (["--layers", "5-3"], "is reversed"),
        (["--record-steps", ","], "selection is empty"),
        (["--record-steps", "7"], "step 7 is out of range"),
        (["--height", "250"], "multiples of 16"),
        (["--frames", "6"], "4*n+1"),
    ],
)
def test_usage_errors_are_one_line_exit_2_and_leave_no_store(model_dir, tmp_path, capsys, args, message):
    out = tmp_path / "bad.zarr"
    resolved = [a(tmp_path) if callable(a) else a for a in args]
    code = main(["record", "--out", str(out), "--model", "random", "--quiet", *map(str, resolved)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_zero_steps_is_a_usage_error(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["record", "--out", str(tmp_path / "z.zarr"), "--model", "random", "--steps", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "z.zarr").exists()


def test_overwrite_refuses_a_directory_that_is_not_a_store(model_dir, tmp_path, capsys):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    code = main(["record", "--out", str(precious), "--model", "random", "--quiet", "--overwrite"])
    assert code == 2
    assert "is not a LayerScope store" in capsys.readouterr().err
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_existing_store_needs_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "x.zarr"
    args = ["record", "--out", str(out), "--model", "random", "--frames", "5", "--steps", "1", "--quiet"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "pipeline, expected",
    [
        ("WanImageToVideoPipeline", (50, 81, 480, 832)),  # diffusers' __call__ defaults, Wan2.1-I2V 480p
        ("HunyuanVideoImageToVideoPipeline", (50, 129, 720, 1280)),
        ("LTXImageToVideoPipeline", (50, 161, 512, 704)),
    ],
)
def test_checkpoint_generation_defaults_come_from_the_pipeline_class(pipeline, expected, tmp_path):
    """A checkpoint folder that declares nothing gets its pipeline class's own sizes, not one constant."""
    from layerscope.cli.options import model_defaults

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    assert model_defaults(str(tmp_path)) == expected
    (tmp_path / "layerscope_model.json").write_text(json.dumps({"generation_defaults": {"bench": {
        "steps": 3, "frames": 5, "height": 32, "width": 48}}}))  # fmt: skip
    assert model_defaults(str(tmp_path), "bench") == (3, 5, 32, 48)  # the folder's declaration wins


def test_a_frame_count_the_pipeline_leaves_to_its_call_comes_from_the_adapter(tmp_path):
    """LTX-2's ``__call__`` has ``num_frames=None`` (121 inside the call): the adapter names it."""
    from layerscope.cli.options import model_defaults

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "LTX2ImageToVideoPipeline"}))
    assert model_defaults(str(tmp_path)) == (30, 121, 512, 768)
