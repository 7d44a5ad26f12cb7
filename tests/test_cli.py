"""CLI contract: --help everywhere, one-line errors with exit code 2, no tracebacks."""

import subprocess
import sys

import pytest

from fesim.cli import main

COMMANDS = ["phantom", "inspect", "run", "study", "demo"]


def _run(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "fesim.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_for_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: fesim " + cmd in capsys.readouterr().out


def test_cohort_is_an_alias_of_study(capsys):
    with pytest.raises(SystemExit) as e:
        main(["cohort", "--help"])
    assert e.value.code == 0 and "usage: fesim study" in capsys.readouterr().out


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("  warnings.warn", "/"))]
    err = [l for l in lines if l.startswith("fesim: error:")]
    assert len(err) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n.lower() in err[0].lower()


def test_run_on_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _run(["run", "empty", "--out", "o"], tmp_path)
    _assert_one_line_error(proc, "empty")


def test_run_on_non_dicom_files(tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "a.txt").write_text("not a dicom file")
    (d / "b.dcm").write_bytes(b"\x00" * 300)
    proc = _run(["run", "junk", "--out", "o"], tmp_path)
    _assert_one_line_error(proc, "dicom")


def test_run_on_missing_path(tmp_path):
    proc = _run(["run", "nowhere", "--out", "o"], tmp_path)
    _assert_one_line_error(proc, "nowhere")


def test_inspect_on_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    _assert_one_line_error(_run(["inspect", "e"], tmp_path))


def test_bad_option_value_is_a_usage_error(tmp_path):
    proc = _run(["run", "x", "--out", "o", "--screw-entry", "1,2"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
