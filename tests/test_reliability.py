"""Command-line batches under hostile conditions: symlink cycles, strict consoles, odd names, reruns into the input
folder, killed runs, bad options. Each ends in a result or a clear error (exit code, option or file named), never a
traceback or a hang."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gapdiff_core.cli import main
from gapdiff_core.io.atomic import _HOST, TEMP_PREFIX
from gapdiff_core.io import NAME_MAX, decode_formats, iter_image_paths, load_image, output_path_for


@pytest.fixture(scope="module")
def generator(saturated_generator_file):
    return saturated_generator_file


def photo(path, size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def run_cli(*args, env=None, timeout=120):
    """`python -m gapdiff_core.cli ...` in a child process: (exit code, stdout, stderr)."""
    environment = {**os.environ, **(env or {})}
    done = subprocess.run([sys.executable, "-m", "gapdiff_core.cli", *map(os.fsdecode, args)], capture_output=True,
                          env=environment, timeout=timeout)
    return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")


def test_recursive_glob_over_symlink_cycles_ends(tmp_path):
    tree = tmp_path / "dir"
    for sub in ("a", "b", "c"):
        (tree / sub).mkdir(parents=True)
        os.symlink(tree, tree / sub / "up")  # three cycles: following them is exponential (a hang)
    photo(tree / "a" / "x.jpg")
    photo(tree / "y.jpg")
    code = ("import sys; from gapdiff_core.io import iter_image_paths; "
            "print(len(iter_image_paths([sys.argv[1]], recursive=True).paths))")
    for pattern in (f"{tree}/**/*.jpg", str(tree)):
        done = subprocess.run([sys.executable, "-c", code, pattern], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr
    rc, out, err = run_cli("compress", f"{tree}/**/*.jpg", "--recursive", "-o", tmp_path / "out", timeout=60)
    assert rc == 0 and "2 compressed, 0 failed" in out, err


def test_strict_ascii_console_prints_unicode_and_undecodable_names(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    photo(src / "visage-é-日本.png")
    photo(Path(os.fsdecode(bytes(src) + b"/caf\xe9-latin1.png")), seed=1)  # not valid UTF-8
    rc, out, err = run_cli("compress", src, "-o", tmp_path / "out", env={"PYTHONIOENCODING": "ascii"})
    assert rc == 0, err
    assert "UnicodeEncodeError" not in err and "2 compressed, 0 failed" in out
    assert len(list((tmp_path / "out").iterdir())) == 2
    broken = tmp_path / "in" / "\u202e-broken.png"  # a failure message with the name is printed too
    broken.write_text("not an image")
    rc, out, err = run_cli("compress", src, "-o", tmp_path / "out2", env={"PYTHONIOENCODING": "ascii"})
    assert rc == 1 and "Traceback" not in err and "\\u202e-broken.png" in err


@pytest.mark.parametrize("command", ["protect", "compress"])
def test_rerun_into_the_input_folder_does_not_reread_outputs(tmp_path, generator, command):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photo(src / "a.png")
    photo(src / "sub" / "b.png", seed=1)
    extra = ["-g", str(generator), "--precision", "fp32"] if command == "protect" else []
    for out, recursive in ((src / "out", ["--recursive"]), (src, [])):  # below the input folder, and the folder
        for _ in range(2):
            assert main([command, str(src), "-o", str(out), "--skip-existing", *recursive, *extra]) == 0
        names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.*"))
        assert not [n for n in names if n.count("_png") > 1], names  # no output of an output
    tag = "_demo-protected.png" if command == "protect" else "_q70.jpg"
    assert (src / "out" / "sub" / f"b_png{tag}").is_file() and (src / f"a_png{tag}").is_file()


def test_skip_existing_continues_an_interrupted_batch(tmp_path, generator, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        photo(src / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    args = ["protect", str(src), "-o", str(out), "-g", str(generator), "--precision", "fp32"]
    assert main(args) == 0
    first = (out / "p0_png_demo-protected.png").stat().st_mtime_ns
    (out / "p1_png_demo-protected.png").unlink()  # as if killed before this one
    capsys.readouterr()
    assert main(args + ["--skip-existing"]) == 0
    assert "1 protected, 2 skipped" in capsys.readouterr().out
    assert (out / "p1_png_demo-protected.png").is_file()
    assert (out / "p0_png_demo-protected.png").stat().st_mtime_ns == first  # not rewritten
    assert main(["compress", str(src), "-o", str(out)]) == 0
    assert main(["compress", str(src), "-o", str(out), "--skip-existing"]) == 0
    assert "0 compressed, 3 skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args + ["--skip-existing", "--overwrite"])


def test_stale_temp_files_of_killed_runs_are_removed(tmp_path, dead_pid):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"{TEMP_PREFIX}{_HOST}-{dead_pid}-k1ll3d.tmp"
    live = out / f"{TEMP_PREFIX}{_HOST}-{os.getppid()}-w0rk1ng.tmp"  # a running process's write
    other_host = out / f"{TEMP_PREFIX}0badc0de-{dead_pid}-r3m0te.tmp"
    foreign = out / ".photo.png.abcd.tmp"  # not ours
    for p in (stale, live, other_host, foreign):
        p.write_bytes(b"partial")
    assert main(["compress", str(photo(tmp_path / "a.png")), "-o", str(out)]) == 0
    assert not stale.exists() and live.exists() and other_host.exists() and foreign.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX) and p not in (live, other_host)]


def test_long_file_names(tmp_path, generator):
    src = tmp_path / "in"
    src.mkdir()
    long_a = photo(src / ("a" * 240 + ".png"))
    long_b = photo(src / ("a" * 236 + "b.png"), seed=1)  # equal first 236 characters: must not collide
    wide = photo(src / ("é" * 122 + ".png"), seed=2)  # 244 bytes in UTF-8
    out = tmp_path / "out"
    assert main(["protect", str(src), "-o", str(out), "-g", str(generator), "--precision", "fp32"]) == 0
    assert main(["compress", str(src), "-o", str(out)]) == 0
    written = sorted(out.iterdir())
    assert len(written) == 6 and all(len(os.fsencode(p.name)) <= NAME_MAX for p in written)
    assert len({p.name for p in written}) == 6
    for source in (long_a, long_b, wide):
        dest = output_path_for(source, out, tag="_demo-protected")
        assert dest.name.startswith(source.stem[:100]) and "~" in dest.name and dest in written
        change = np.abs(load_image(dest).rgb.astype(int) - load_image(source).rgb)
        assert 0 < change.max() <= 8


def test_heic_and_avif_in_folders_are_reported_not_skipped_silently(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    photo(src / "a.png")
    (src / "phone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    if "AVIF" in decode_formats():  # this Pillow decodes AVIF: it is protected like any photo
        Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(src / "b.avif")
    else:
        (src / "b.avif").write_bytes(b"\x00\x00\x00\x18ftypavif" + bytes(64))
    assert main(["compress", str(src), "-o", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "phone.HEIC: skipped, HEIC photos cannot be decoded" in captured.err
    if "AVIF" in decode_formats():
        assert (tmp_path / "out" / "b_avif_q70.jpg").is_file() and "2 compressed, 1 failed" in captured.out
    else:
        assert "b.avif: skipped, AVIF" in captured.err and "1 compressed, 2 failed" in captured.out
    found = iter_image_paths([f"{src}/*"])
    assert [p.name for p in found.paths][:1] == ["a.png"] and any("phone.HEIC" in m for m in found.problems)


@pytest.mark.parametrize("target", ["file", "under_file", "proc", "sys"])
def test_output_folder_that_cannot_hold_files_is_a_clear_error(tmp_path, generator, capsys, target):
    src = photo(tmp_path / "a.png")
    (tmp_path / "taken").write_text("a file")
    out = {"file": tmp_path / "taken", "under_file": tmp_path / "taken" / "sub", "proc": Path("/proc/gapdiff-out"),
           "sys": Path("/sys")}[target]
    if not out.parent.exists():
        pytest.skip(f"{out.parent} does not exist on this system")
    assert main(["compress", str(src), "-o", str(out)]) == 2
    assert main(["protect", str(src), "-o", str(out), "-g", str(generator)]) == 2
    err = capsys.readouterr().err
    assert err.count(str(out)) >= 2 and ("is a file" in err or "cannot write" in err)


@pytest.mark.parametrize("argv, words", [
    (["--budget", "0.5"], "argument --budget: the budget must be 1-255 grey levels on the 0-255 scale"),
    (["--budget", "nan"], "argument --budget: the budget must be 1-255 grey levels on the 0-255 scale"),
    (["--budget", "eight"], "argument --budget: the budget must be a number of grey levels, not 'eight'"),
    (["--quality", "0", "--format", "jpg"], "argument --quality: 0 is outside 1-100"),
    (["--quality", "101"], "argument --quality: 101 is outside 1-100"),
    (["--device", "banana"], "argument --device: 'banana' is not a device"),
    (["--device", "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"],
     "argument --device: cuda"),
])
def test_bad_options_name_the_option(tmp_path, generator, capsys, argv, words):
    src = photo(tmp_path / "a.png")
    with pytest.raises(SystemExit) as refused:
        main(["protect", str(src), "-o", str(tmp_path / "out"), "-g", str(generator), *argv])
    assert refused.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_jpeg_output_reports_the_change_of_the_saved_file(tmp_path, generator, capsys):
    src = photo(tmp_path / "a.png", (96, 64))
    out = tmp_path / "out"
    assert main(["protect", str(src), "-o", str(out), "-g", str(generator), "--format", "jpg", "--quality", "1",
                 "--precision", "fp32"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "max change" in l)
    saved = load_image(out / "a_png_demo-protected.jpg").rgb.astype(int)
    actual = np.abs(saved - load_image(src).rgb).max()
    assert actual > 8 and f"max change {actual} grey levels" in line and "beyond the 8-level budget" in line


def test_extreme_aspect_ratio_is_refused_in_working_mode_before_it_costs_memory(tmp_path, generator, capsys):
    strip = photo(tmp_path / "strip.png", (4000, 16))  # 512 x 128000 pixels at the working resolution
    args = ["protect", str(strip), "-o", str(tmp_path / "out"), "-g", str(generator), "--precision", "fp32"]
    assert main(args) == 1
    assert "strip.png: a 4000x16 photo is 128000x512 at the working resolution" in capsys.readouterr().err
    assert main(args + ["--mode", "native"]) == 0  # tiled: bounded memory
    saved = load_image(tmp_path / "out" / "strip_png_demo-protected.png").rgb.astype(int)
    assert 0 < np.abs(saved - load_image(strip).rgb).max() <= 8


def test_app_options_are_checked_before_anything_starts(capsys):
    from gapdiff_core.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["app", "--max-file-size", "2 GB"]).max_file_size == "2gb"
    for argv, words in ((["--max-file-size", "banana"], "argument --max-file-size: 'banana' is not a size"),
                        (["--budget", "0.2"], "argument --budget: the budget must be 1-255 grey levels")):
        with pytest.raises(SystemExit) as refused:
            parser.parse_args(["app", *argv])
        assert refused.value.code == 2 and words in capsys.readouterr().err


def test_iterative_methods_skip_existing_and_leave_out_earlier_outputs(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    photo(src / "a.png")
    photo(src / "b.png", seed=1)
    args = ["protect", str(src), "-o", str(src / "out"), "--recursive", "--method", "photoguard", "--schedule",
            "tiny", "--format", "jpg", "--quality", "5"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "-level budget; save as png" in first  # the change reported is the saved JPEG's
    written = sorted(p.name for p in (src / "out").iterdir())
    assert written == ["a_png_photoguard-demo-protected.jpg", "b_png_photoguard-demo-protected.jpg"]
    assert main(args + ["--skip-existing"]) == 0
    assert "0 protected, 2 skipped" in capsys.readouterr().out
    assert sorted(p.name for p in (src / "out").iterdir()) == written
