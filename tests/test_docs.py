"""The documentation: every relative link resolves, every command it shows parses with the script's own
parser, and `docs/reference/cli.md` is what the parsers print (`UPDATE_DOCS=1 python -m pytest -n 0
tests/test_docs.py` rewrites it after a flag changes)."""

import argparse
import glob
import importlib
import os
import re
import shlex

from conftest import ROOT
from lesion_unet import cliargs

DOCS = sorted([os.path.join(ROOT, "README.md"), os.path.join(ROOT, "CHANGELOG.md"),
               *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)])
CLI_REFERENCE = os.path.join(ROOT, "docs", "reference", "cli.md")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```(?:bash|sh)?\n(.*?)```", re.S)


def _parsers():
    """Each root script's parser, by the name a user types."""
    parsers = {}
    for script in ("train", "evaluate", "predict", "export", "app", "download_isic", "make_figures", "synthetic",
                   "protocol"):
        parsers[f"{script}.py"] = importlib.import_module(script).build_parser()
    parsers["dataGenerator.py"] = importlib.import_module("dataGenerator")._argument_parser()
    parsers["model_improved.py"] = cliargs.model_summary_parser("Improved U-Net", 16, 5, "resolution levels")
    parsers["model_basic.py"] = cliargs.model_summary_parser("basic U-Net", 64, 4, "number of poolings")
    for name, parser in parsers.items():
        parser.prog = f"python {name}"
        for command, subparser in _subcommands(parser).items():
            subparser.prog = f"python {name} {command}"
    return parsers


def _subcommands(parser):
    """`{name: parser}` of a parser's subcommands (`protocol.py shift`, ...), or `{}`."""
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def render_cli_reference():
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    try:
        parts = ["# Command-line reference\n\nEvery flag of every script, as its `--help` prints it. "
                 "This page is generated from the parsers, and a test keeps it so.\n"]
        for name, parser in _parsers().items():
            parts.append(f"\n## {name}\n\n```text\n{parser.format_help().rstrip()}\n```\n")
            for command, subparser in _subcommands(parser).items():
                parts.append(f"\n### {name} {command}\n\n```text\n{subparser.format_help().rstrip()}\n```\n")
        return "".join(parts)
    finally:
        del os.environ["COLUMNS"]


def test_the_cli_reference_is_what_the_parsers_print():
    expected = render_cli_reference()
    if os.environ.get("UPDATE_DOCS"):
        with open(CLI_REFERENCE, "w", encoding="utf-8") as handle:
            handle.write(expected)
    with open(CLI_REFERENCE, encoding="utf-8") as handle:
        assert handle.read() == expected, "run UPDATE_DOCS=1 python -m pytest -n 0 tests/test_docs.py"


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return text.replace(" ", "-")


def _anchors(path):
    with open(path, encoding="utf-8") as handle:
        text = FENCE.sub("", handle.read())
    return {_slug(line) for line in text.splitlines() if line.startswith("#")}


def test_every_relative_link_resolves():
    assert len(DOCS) > 20  # README, the changelog and docs/ are all read
    broken = []
    for path in DOCS:
        with open(path, encoding="utf-8") as handle:
            text = FENCE.sub("", handle.read())
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(resolved):
                broken.append(f"{os.path.relpath(path, ROOT)}: {target} (no such file)")
            elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
                broken.append(f"{os.path.relpath(path, ROOT)}: {target} (no such heading)")
    assert broken == []


def _commands():
    """`(doc, command line)` for each `python SCRIPT.py ...` in the docs' shell blocks."""
    found = []
    for path in DOCS:
        with open(path, encoding="utf-8") as handle:
            blocks = FENCE.findall(handle.read())
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                    words = part.split()
                    if len(words) >= 2 and words[0] in ("python", "python3") and words[1] in _SCRIPTS:
                        found.append((os.path.relpath(path, ROOT), part.strip()))
    return found


_SCRIPTS = ("train.py", "evaluate.py", "predict.py", "export.py", "app.py", "download_isic.py", "make_figures.py",
            "synthetic.py", "dataGenerator.py", "model_improved.py", "model_basic.py", "protocol.py")


def test_every_command_the_docs_show_parses(capsys):
    parsers = _parsers()
    commands = _commands()
    assert len(commands) > 30 and {line.split()[1] for _, line in commands} >= {"train.py", "evaluate.py", "predict.py"}
    refused = []
    for doc, line in commands:
        # `[--tta]` marks an optional flag in the docs: parse the line with each one in it.
        words = shlex.split(re.sub(r"\[([^\]|]*)\]", r"\1", line))
        words = [word for word in words if word not in ("|", "...")]
        try:
            if words[1] == "protocol.py" and "--" in words:  # `protocol.py cv ... -- TRAIN.PY FLAGS`
                split = words.index("--")
                parsers["protocol.py"].parse_args(words[2:split])
                parsers["train.py"].parse_args(words[split + 1 :])
            else:
                parsers[words[1]].parse_args(words[2:])
        except SystemExit:
            refused.append(f"{doc}: {line}: {capsys.readouterr().err.strip()}")
    assert refused == []


def test_readme_is_short_and_the_docs_speak_of_paths_users_have():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        assert len(handle.read().splitlines()) <= 250
    for path in DOCS:
        with open(path, encoding="utf-8") as handle:
            assert "../shared" not in handle.read(), path
