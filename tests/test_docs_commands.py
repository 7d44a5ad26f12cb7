"""Every command README.md and docs/**/*.md show is checked in a quick form, so the docs stay
true to the code.

From the fenced shell blocks (sh, bash, console, shell) of the docs: each ``fesim ...`` line is
parsed by the real parser (:func:`fesim.cli.build_parser`: the subcommand, every ``--flag`` and
the values argparse checks, such as choices and export formats; nothing is run), each
subcommand used answers ``--help``, each ``python examples/...`` or ``python benchmarks/...``
script exists and answers ``--help`` (or imports, when it has no argparse), and each
``make <target>`` names a Makefile target. Inline code in the prose (```--flag value```,
```fesim sub ...```, ```python path.py```) is held to the same parser and files. Paths and data
in the commands (scan1/dicom, ct.nii.gz, ...) need not exist.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_LANGS = {"sh", "bash", "console", "shell", "shell-session"}
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w-]*)")
_PYTHON = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")
_SCRIPT_DIRS = ("examples/", "benchmarks/")


# ----------------------------------------------------------------------------- parsing the docs

def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) of the fenced shell blocks of a markdown text.

    In ``console`` blocks only ``$ `` lines are commands (the rest is output); a trailing
    backslash joins the next line.
    """
    out, lang, fence, pending = [], None, None, None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if m and (fence is None or m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence)
                  and not m.group(2)):
            if fence is None:
                fence, lang = m.group(1), m.group(2).lower()
            else:
                fence, lang = None, None
            continue
        if fence is None or lang not in SHELL_LANGS:
            continue
        if pending is not None:
            start, prev = pending
            line, pending = prev.rstrip() + " " + line.strip(), None
        else:
            start = n
            if lang in ("console", "shell-session"):
                if not line.lstrip().startswith("$ "):
                    continue
                line = line.lstrip()[2:]
        if line.rstrip().endswith("\\"):
            pending = (start, line.rstrip()[:-1])
            continue
        if line.strip():
            out.append((start, line.strip()))
    return out


def commands(line: str) -> list[list[str]]:
    """Argument vectors of one shell line: comments dropped, split at ``&&``, ``||``, ``;``, ``|``."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split, lex.commenters = True, "#"
    argvs, cur = [], []
    for tok in lex:
        if tok and set(tok) <= set(";&|"):
            argvs.append(cur)
            cur = []
        else:
            cur.append(tok)
    argvs.append(cur)
    return [a for a in argvs if a]


def doc_commands(text: str) -> list[tuple[int, list[str]]]:
    return [(n, argv) for n, line in shell_lines(text) for argv in commands(line)]


def script_of(argv: list[str]) -> str | None:
    """``examples/x.py`` or ``benchmarks/x.py`` when ``argv`` runs such a script with python."""
    if len(argv) >= 2 and _PYTHON.match(argv[0]) and argv[1].startswith(_SCRIPT_DIRS):
        return argv[1]
    return None


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def fesim_errors(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with ``fesim <argv>`` for ``parser`` (empty when the docs are right)."""
    subs = _subparsers(parser)
    top = [a for a in argv if not a.startswith("-")][:1]
    if not top:
        return [] if argv and set(argv) <= {"--help", "-h", "--version"} else ["no subcommand"]
    sub = top[0]
    if sub not in subs:
        return [f"unknown subcommand {sub!r} (fesim has {', '.join(subs)})"]
    known = set(subs[sub]._option_string_actions) | set(parser._option_string_actions)
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    errors = [f"fesim {sub} has no flag {f}" for f in flags if f not in known]
    if errors or {"--help", "-h", "--version"} & set(argv):
        return errors
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(argv)
        except SystemExit:
            return [err.getvalue().strip().splitlines()[-1]]
    return []


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


def doc_errors(text: str, parser: argparse.ArgumentParser, targets: set[str] = frozenset(),
               root: Path = ROOT) -> list[str]:
    """Every wrong command of a markdown text, as ``"line N: fesim ...: problem"``."""
    errors = []
    for n, argv in doc_commands(text):
        cmd = " ".join(argv)
        if argv[0] == "fesim":
            errors += [f"line {n}: {cmd}: {e}" for e in fesim_errors(argv[1:], parser)]
        elif script_of(argv) and not (root / script_of(argv)).is_file():
            errors.append(f"line {n}: {cmd}: no file {script_of(argv)}")
        elif argv[0] == "make" and targets and any(t not in targets for t in argv[1:] if "=" not in t):
            errors.append(f"line {n}: {cmd}: not a Makefile target")
    return errors


# ----------------------------------------------------------------------------- inline code

_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def inline_errors(text: str, parser: argparse.ArgumentParser, root: Path = ROOT) -> list[str]:
    """Inline code spans in the prose: ```--flag [value]```, ```fesim ...```, ```python x.py```.

    A bare flag must belong to some fesim subcommand, and a value shown with it must be one of
    its choices (``a|b`` lists alternatives).
    """
    body = re.sub(r"^\s*(`{3,}|~{3,}).*?^\s*\1", "", text, flags=re.S | re.M)
    actions = {}
    for sub in _subparsers(parser).values():
        actions.update(sub._option_string_actions)
    actions.update(parser._option_string_actions)
    errors = []
    for n, line in enumerate(body.splitlines(), 1):
        for span in _INLINE.findall(line):
            try:
                argv = shlex.split(span)
            except ValueError:
                continue
            if not argv:
                continue
            if argv[0] == "fesim" and len(argv) > 1:  # a bare `fesim` names the package
                errors += [f"`{span}`: {e}" for e in fesim_errors(argv[1:], parser)
                           if "arguments are required" not in e]
            elif _PYTHON.match(argv[0]) and len(argv) > 1 and argv[1].endswith(".py"):
                if not (root / argv[1]).is_file():
                    errors.append(f"`{span}`: no file {argv[1]}")
            elif re.fullmatch(r"--[a-z][a-z0-9-]*", argv[0]):
                act = actions.get(argv[0])
                if act is None:
                    errors.append(f"`{span}`: no fesim flag {argv[0]}")
                elif len(argv) == 2 and act.choices is not None:
                    bad = [v for v in argv[1].split("|") if _value(act, v) not in act.choices]
                    if bad:
                        errors.append(f"`{span}`: {argv[0]} takes {', '.join(map(str, act.choices))}")
    return errors


def _value(action, text):
    try:
        return action.type(text) if callable(action.type) else text
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return text


# ----------------------------------------------------------------------------- the docs themselves

def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


FESIM = [(_rel(p), n, argv) for p in DOCS for n, argv in doc_commands(p.read_text()) if argv[0] == "fesim"]
SCRIPT_FLAGS: dict[str, set] = {}
for _doc in DOCS:
    for _, _argv in doc_commands(_doc.read_text()):
        if script_of(_argv):
            SCRIPT_FLAGS.setdefault(script_of(_argv), set()).update(
                a.split("=", 1)[0] for a in _argv[2:] if a.startswith("--"))
SCRIPTS = sorted(SCRIPT_FLAGS)
SUBCOMMANDS = sorted({next((a for a in argv[1:] if not a.startswith("-")), None) for _, _, argv in FESIM}
                     - {None})


@pytest.fixture(scope="module")
def parser():
    from fesim.cli import build_parser

    return build_parser()


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_docs_show_commands():
    # The parsing above found the command blocks (a regex gone wrong would check nothing).
    assert len(FESIM) >= 8 and {"phantom", "run", "cohort"} <= set(SUBCOMMANDS)
    assert "examples/lumbar_levels.py" in SCRIPTS and "benchmarks/solve.py" in SCRIPTS


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_doc_commands_parse(doc, parser):
    errors = doc_errors(doc.read_text(), parser, make_targets())
    assert not errors, f"{_rel(doc)}:\n" + "\n".join(errors)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_doc_inline_code(doc, parser):
    errors = inline_errors(doc.read_text(), parser)
    assert not errors, f"{_rel(doc)}:\n" + "\n".join(errors)


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_subcommand_help(sub):
    r = subprocess.run([sys.executable, "-m", "fesim", sub, "--help"], capture_output=True, text=True,
                       env=_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    aliases = {"cohort": "study"}  # an alias shows its command's usage
    assert r.stdout.startswith((f"usage: fesim {sub}", f"usage: fesim {aliases.get(sub, sub)}"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script):
    path = ROOT / script
    assert path.is_file(), f"{script} shown in the docs does not exist"
    if "argparse" in path.read_text():
        r = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True,
                           env=_env(), cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("usage:")
        shown = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", r.stdout))
        missing = SCRIPT_FLAGS[script] - shown
        assert not missing, f"the docs show {script} with {sorted(missing)}, which it does not take"
    else:  # imported, not run: the script's own folder on the path, as when run
        assert not SCRIPT_FLAGS[script], f"the docs pass flags to {script}, which takes none"
        code = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); "
                "runpy.run_path(sys.argv[2], run_name='doc_check')")
        r = subprocess.run([sys.executable, "-c", code, str(path.parent), str(path)], capture_output=True,
                           text=True, env=_env(), cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- the checker fails

SNIPPET = """\
Some prose with `--caps pmma` and `fesim run --help`.

```sh
fesim phantom --out scan1 --seed 3   # fine
fesim run scan1/dicom --out r --no-such-flag   # a flag that does not exist
fesim run scan1/dicom --out r --caps glue && fesim inspect scan1/dicom
fesim run ct.nii.gz --labels seg.nii.gz \\
    --levle L2 --out r
fesim frobnicate --out x
python examples/no_such_example.py a b
make demo
make no-such-target
```

```console
$ fesim phantom --out x --sed 3
usage: this is output --not-a-flag
```

```python
fesim_run("--ignored-in-python-blocks")
```
"""


def test_checker_finds_wrong_commands(parser):
    errors = doc_errors(SNIPPET, parser, {"demo", "test"})
    text = "\n".join(errors)
    assert "line 5: " in text and "has no flag --no-such-flag" in text
    assert "line 6: " in text and "glue" in text  # a value outside the flag's choices
    assert "line 7: " in text and "has no flag --levle" in text  # continued line
    assert "unknown subcommand 'frobnicate'" in text
    assert "no file examples/no_such_example.py" in text
    assert "make no-such-target" in text and "make demo:" not in text
    assert "has no flag --sed" in text
    assert "--not-a-flag" not in text and "--ignored" not in text  # output and python blocks
    assert "line 4:" not in text and "fesim inspect" not in text  # the right commands pass
    assert len(errors) == 7


def test_checker_finds_wrong_inline_code(parser):
    text = "Use `--caps pmma`, `--cap-shape flat|round`, `--no-such-flag` and `python benchmarks/nope.py`."
    errors = inline_errors(text + "\n" + SNIPPET, parser)
    assert len(errors) == 3, errors
    assert any("--cap-shape takes" in e for e in errors)
    assert any("no fesim flag --no-such-flag" in e for e in errors)
    assert any("benchmarks/nope.py" in e for e in errors)


def test_shell_lines_and_commands():
    assert commands("fesim a --x 1 && fesim b  # comment; not a command") == \
        [["fesim", "a", "--x", "1"], ["fesim", "b"]]
    lines = shell_lines("```bash\nfesim a \\\n  --b c\n```\ntext\n```\nfesim not-shell\n```\n")
    assert lines == [(2, "fesim a --b c")]
