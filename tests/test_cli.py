"""The `gapdiff` command line: protect, compress, convert, info."""
import numpy as np
import pytest
import torch
from PIL import Image

from gapdiff_core import Generator
from gapdiff_core.cli import build_parser, main
from gapdiff_core.io import load_image


@pytest.fixture(scope="module")
def demo_generator(saturated_generator_file):
    return saturated_generator_file


def write_photo(path, size=(300, 200), seed=0, **save_kwargs):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, **save_kwargs)
    return path


def test_help_states_budget_units(capsys):
    with pytest.raises(SystemExit):
        main(["protect", "--help"])
    text = capsys.readouterr().out
    assert "grey levels" in text and "0-255" in text
    assert "grey levels" in build_parser().format_help()


def test_method_names_in_help_and_aliases_follow_the_registry(tmp_path, demo_generator, capsys):
    import re

    from gapdiff_core.protections import METHODS

    for command in ("protect", "evaluate"):  # the help spells the names out (no torch import): all of them
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert [n for n in METHODS if not re.search(rf"\b{re.escape(n)}\b", text)] == [], command
    photo = write_photo(tmp_path / "a.png", size=(64, 48))
    assert main(["protect", str(photo), "-o", str(tmp_path / "out"), "-g", str(demo_generator),
                 "--method", "generator"]) == 0  # the old name picks the generator path
    assert len(list((tmp_path / "out").glob("a_png_demo-protected.png"))) == 1
    assert main(["protect", str(photo), "-o", str(tmp_path / "x"), "--method", "nope"]) == 2
    assert "unknown protection 'nope'" in capsys.readouterr().err


def test_protect_without_generator_says_where_to_get_one(tmp_path, capsys):
    photo = write_photo(tmp_path / "a.png")
    assert main(["protect", str(photo), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "G_per16_pretrain.pth" in err and "gapdiff train" in err
    assert not (tmp_path / "out").exists()


def test_protect_batch_goes_on_past_bad_files(tmp_path, demo_generator, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    good = [write_photo(src / "a.jpg", exif=exif.tobytes(), quality=95), write_photo(src / "a.png", seed=1),
            write_photo(src / "sub" / "b.webp", (520, 600), seed=2, lossless=True)]
    (src / "broken.jpg").write_text("not an image")
    (src / "empty.png").write_bytes(b"")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    code = main(["protect", str(src), str(tmp_path / "missing.png"), "-o", str(out), "-g", str(demo_generator),
                 "--recursive", "--precision", "fp32"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.jpg" in captured.err and "empty.png" in captured.err and "missing.png" in captured.err
    assert "3 protected, 3 failed" in captured.out and "DEMO" in captured.out
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a_jpg_demo-protected.png", "a_png_demo-protected.png", "sub/b_webp_demo-protected.png"]
    for original, name in zip(good, written):
        a, b = load_image(original), load_image(out / name)
        change = np.abs(a.rgb.astype(int) - b.rgb.astype(int))
        assert change.max() <= 8 and change.mean() > 1
        assert "exif" not in Image.open(out / name).info  # metadata stripped
    assert before == {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}  # inputs untouched


def test_protect_refuses_to_overwrite_existing_outputs_unless_asked(tmp_path, demo_generator, capsys):
    photo = write_photo(tmp_path / "a.png")
    args = ["protect", str(photo), "-o", str(tmp_path / "out"), "-g", str(demo_generator), "--precision", "fp32"]
    assert main(args) == 0
    out = tmp_path / "out" / "a_png_demo-protected.png"
    first = out.read_bytes()
    assert main(args) == 1
    assert out.read_bytes() == first and "--overwrite" in capsys.readouterr().err
    out.write_bytes(b"stale")
    assert main(args + ["--overwrite"]) == 0
    assert out.read_bytes() == first  # replaced by the same deterministic result
    original = photo.read_bytes()
    assert main(["compress", str(photo), "-o", str(tmp_path), "--overwrite"]) == 0  # next to the input, not over it
    assert photo.read_bytes() == original and Image.open(tmp_path / "a_png_q70.jpg").format == "JPEG"


def test_equal_names_from_different_folders_get_their_folders(tmp_path, demo_generator):
    for sub in ("x", "y"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        write_photo(tmp_path / "in" / sub / "a.png", (64, 48))
    out = tmp_path / "out"
    files = [str(tmp_path / "in" / sub / "a.png") for sub in ("x", "y")]
    assert main(["protect", *files, "-o", str(out), "-g", str(demo_generator), "--precision", "fp32"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "x/a_png_demo-protected.png", "y/a_png_demo-protected.png"]
    folders = [str(tmp_path / "in" / sub) for sub in ("x", "y")]
    assert main(["compress", *folders, "-o", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["x/a_png_q70.jpg", "y/a_png_q70.jpg"]
    assert main(["compress", files[0], "-o", str(tmp_path / "flat")]) == 0  # one folder: flat
    assert (tmp_path / "flat" / "a_png_q70.jpg").is_file()


def test_compress_writes_real_jpeg(tmp_path):
    photo = write_photo(tmp_path / "a.png", (256, 256))
    assert main(["compress", str(photo), "-o", str(tmp_path / "out"), "-q", "50"]) == 0
    jpg = tmp_path / "out" / "a_png_q50.jpg"
    im = Image.open(jpg)
    assert im.format == "JPEG" and im.size == (256, 256)
    with pytest.raises(SystemExit) as refused:  # argparse: the option named, exit code 2
        main(["compress", str(photo), "-o", str(tmp_path / "o2"), "-q", "0"])
    assert refused.value.code == 2 and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("how", ["folder", "glob"])
def test_compress_mirrors_subfolders_so_equal_names_do_not_collide(tmp_path, how, monkeypatch):
    ramp = np.linspace(0, 150, 64, dtype=np.float32)[None, :, None]
    for i, sub in enumerate(("x", "y", "y/z")):  # smooth images, distinct grey offsets
        (tmp_path / "in" / sub).mkdir(parents=True)
        img = np.broadcast_to(ramp + 50 * i, (48, 64, 3)).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "in" / sub / "a.png")
    monkeypatch.chdir(tmp_path)
    source = ["in", "--recursive"] if how == "folder" else ["in/**/a.png", "--recursive"]
    assert main(["compress", *source, "-o", "out", "-q", "90"]) == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg"))
    assert written == ["x/a_png_q90.jpg", "y/a_png_q90.jpg", "y/z/a_png_q90.jpg"]
    for sub in ("x", "y", "y/z"):  # each output is its own input compressed
        original = load_image(tmp_path / "in" / sub / "a.png").rgb.astype(int)
        assert np.abs(load_image(tmp_path / "out" / sub / "a_png_q90.jpg").rgb - original).mean() < 2


def test_convert_official_pth_and_info(tmp_path, capsys):
    torch.manual_seed(0)
    g = Generator(ngf=8)
    torch.save({"generator." + k: v for k, v in g.state_dict().items()}, tmp_path / "G_per16.pth")
    dest = tmp_path / "G.safetensors"
    assert main(["convert", str(tmp_path / "G_per16.pth"), str(dest)]) == 0
    assert main(["info", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "budget 8 grey levels" in out and "G_per16.pth" in out and "ngf=8" in out
    assert main(["convert", str(tmp_path / "G_per16.pth"), str(dest)]) == 2  # never overwrites
    assert main(["info", str(tmp_path / "nothing.pth")]) == 2


def test_malloc_keeps_freed_memory_only_for_batch_commands(monkeypatch, tmp_path):
    """protect and compress keep freed memory for their repeated generator passes; long-running commands (app,
    serve, train) and every other command keep glibc's defaults."""
    import argparse

    from gapdiff_core import cli

    tuned = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: tuned.append(True))
    photo = write_photo(tmp_path / "a.png")
    assert main(["protect", str(photo), "-o", str(tmp_path / "out")]) == 2  # no generator: fails after the tuning
    assert main(["info", str(tmp_path / "missing.pth")]) == 2
    assert tuned == [True]

    class Parser:
        def __init__(self, command):
            self.command = command

        def parse_args(self, argv):
            return argparse.Namespace(command=self.command, run=lambda args: 0, debug=False)

    for name in cli.COMMANDS:
        tuned.clear()
        monkeypatch.setattr(cli, "build_parser", lambda name=name: Parser(name.replace("_", "-")))
        assert main([]) == 0
        assert tuned == ([True] if name in ("protect", "compress") else []), name


def subcommand_parsers():
    """{command: its argparse parser}, for every command in cli.COMMANDS."""
    import argparse

    from gapdiff_core import cli

    sub, = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    names = {name.replace("_", "-") for name in cli.COMMANDS}
    aliases = {alias: name.replace("_", "-") for name, spelled in cli.ALIASES.items() for alias in spelled}
    assert set(sub.choices) == names | set(aliases)
    assert all(sub.choices[alias] is sub.choices[name] for alias, name in aliases.items())  # the same command
    return {name: parser for name, parser in sub.choices.items() if name in names}


def minimal_argv(parser, skip) -> list[str]:
    """Placeholder values for what `parser` requires (positionals, required options), `skip` left out."""
    argv = []
    for action in parser._actions:
        if action is skip or action.help == "show this help message and exit":
            continue
        if not action.option_strings:
            argv += ["x"] * (1 if action.nargs in (None, "+") else 0)
        elif action.required:
            argv += [action.option_strings[0], "x"]
    return argv


def test_every_budget_option_of_every_command_follows_the_one_budget_rule(capsys):
    checked = []
    for command, parser in subcommand_parsers().items():
        for action in parser._actions:
            for flag in (f for f in action.option_strings if f.startswith("--budget")):
                argv = [command, *minimal_argv(parser, action)]
                for good in ("1", "255"):  # accepted: so a refusal below is the budget's
                    build_parser().parse_args(argv + [flag, good])
                for bad in ("0.5", "256", "nan"):
                    if command == "serve":  # checked with the environment's and the YAML's, in one line at start-up
                        assert main(["serve", "-g", "missing.safetensors", flag, bad]) == 2
                        err = capsys.readouterr().err
                        assert f"flag {flag} = '{bad}': budget must be 1-255 grey levels" in err, (command, bad)
                        continue
                    with pytest.raises(SystemExit) as refused:
                        build_parser().parse_args(argv + [flag, bad])
                    assert refused.value.code == 2, (command, flag, bad)
                    err = capsys.readouterr().err
                    assert f"argument {flag}: the budget must be 1-255 grey levels" in err, (command, bad)
                    assert f"not '{bad}'" in err, (command, bad)
                checked.append(command)
    assert {"protect", "convert", "app", "serve", "demo", "evaluate"} <= set(checked)


def test_precision_and_mode_choices_are_the_protectors_constants(capsys):
    from gapdiff_core.model.protector import MODES, PRECISION_CHOICES, PRECISIONS

    assert PRECISION_CHOICES == ("auto", *PRECISIONS)
    seen = {"--precision": [], "--mode": []}
    for command, parser in subcommand_parsers().items():
        for action in parser._actions:
            if "--precision" in action.option_strings:
                assert tuple(action.choices) == PRECISION_CHOICES, command
                seen["--precision"].append(command)
            if "--mode" in action.option_strings:
                assert tuple(action.choices) == MODES, command
                seen["--mode"].append(command)
    assert set(seen["--precision"]) >= {"protect", "app", "serve"} and set(seen["--mode"]) >= {"protect", "serve"}
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(PRECISION_CHOICES) + "}" in help_text and "{" + ",".join(MODES) + "}" in help_text


def test_convert_never_replaces_a_file_that_appears_while_it_writes(tmp_path, monkeypatch, capsys):
    """The existence check before loading is only an early answer: the write itself is create-if-absent, so a file
    that another convert (or anything) puts there meanwhile is kept and this convert fails with exit code 2."""
    from gapdiff_core.model import checkpoint

    torch.manual_seed(0)
    g = Generator(ngf=8).eval()
    torch.save({"generator." + k: v for k, v in g.state_dict().items()}, tmp_path / "G_per16.pth")
    dest = tmp_path / "G.safetensors"
    load = checkpoint.load_generator

    def load_then_race(path, *args, **kwargs):
        generator = load(path, *args, **kwargs)
        dest.write_bytes(b"the other convert's file")  # appears after the check, before the write
        return generator

    monkeypatch.setattr(checkpoint, "load_generator", load_then_race)
    assert main(["convert", str(tmp_path / "G_per16.pth"), str(dest)]) == 2
    assert dest.read_bytes() == b"the other convert's file"
    assert f"{dest} exists" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_a_user_mistake_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    """A mistake that reaches the console script (here a models folder inside a file: NotADirectoryError) is one
    line naming it and exit code 2; with --debug, before or after the command, the exception propagates whole."""
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    target = str(not_a_folder / "models")
    assert main(["demo-assets", target, "--untrained"]) == 2
    err = capsys.readouterr().err
    assert "file.txt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 2
    assert "--debug" in err.splitlines()[1]
    for argv in (["--debug", "demo-assets", target, "--untrained"], ["demo-assets", target, "--untrained", "--debug"]):
        with pytest.raises(NotADirectoryError):
            main(argv)


def test_demo_assets_creates_its_folder_and_keeps_its_old_name(tmp_path, capsys):
    """`demo-assets` makes a models folder that does not exist yet (the old command refused it); the ComfyUI-only
    name still works and runs the same command, which keeps what it wrote the first time."""
    from gapdiff_core import load_generator

    models = tmp_path / "new" / "models"
    assert main(["demo-assets", str(models), "--untrained"]) == 0
    generator = models / "gapdiff" / "gapdiff_demo_generator.safetensors"
    assert load_generator(generator).info.demo
    assert (models / "checkpoints" / "gapdiff_demo_tiny_sd.safetensors").is_file()
    assert "demo-assets --untrained" in load_generator(generator).info.provenance
    assert build_parser().parse_args(["comfyui-demo-assets", str(models)]).command == "demo-assets"
    capsys.readouterr()
    assert main(["comfyui-demo-assets", str(models), "--untrained"]) == 0
    assert capsys.readouterr().out.count("kept ") == 2
