"""Every command and the library snippet in README.md and docs/*.md run as written.

The commands are read from the documents themselves (fenced shell blocks, indented blocks,
and inline `python ...` spans), so a command added to the docs is checked without editing
this file. For each `python <script>` command: its options parse (the script's own
`parse_args`, nothing runs), `--help` runs in a fresh interpreter with no `PYTHONPATH`
pointing at the repository (as after `pip install -e .`), and each benchmark command runs
with `--tiny` added. Commands that need a GPU server (`vllm`, `--base-url`) are only parsed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hang_guard import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}


def _join_continuations(lines: list[str]) -> list[str]:
    joined, current = [], ""
    for line in lines:
        line = line.strip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    if current:
        joined.append(current)
    return [line for line in joined if line]


def shell_lines(text: str) -> list[str]:
    """Shell lines of a markdown text: fenced shell blocks (also indented, inside a list item),
    4-space indented blocks, inline `python ...`."""
    lines = []
    fence = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
    for indent, language, body in fence.findall(text):
        if language in SHELL_LANGUAGES:
            lines += _join_continuations([line.removeprefix(indent) for line in body.splitlines()])
    prose = fence.sub("", text)
    indented = re.findall(r"(?:^ {4}.*\S.*\n?)+", prose, re.M)
    for block in indented:
        lines += [line for line in _join_continuations(block.splitlines()) if line.startswith("python")]
    lines += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith("python ")]
    return lines


def python_commands(line: str) -> list[list[str]]:
    """The `python ...` commands of a shell line (split on &&, comments dropped) as argv lists."""
    commands = []
    for part in line.split("&&"):
        tokens = shlex.split(part, comments=True)
        if tokens and tokens[0] == "python":
            commands.append(tokens[1:])
    return commands


def documented_commands() -> list[tuple[str, list[str]]]:
    found: dict[str, tuple[str, list[str]]] = {}
    for document in DOCUMENTS:
        for line in shell_lines(document.read_text()):
            for argv in python_commands(line):
                found.setdefault(" ".join(argv), (document.name, argv))
    return sorted(found.values(), key=lambda item: " ".join(item[1]))


COMMANDS = documented_commands()
SCRIPT_COMMANDS = [(doc, argv) for doc, argv in COMMANDS if argv[0].endswith(".py")]
MODULE_COMMANDS = [(doc, argv) for doc, argv in COMMANDS if argv[0] == "-m" and argv[1] != "pytest"]


def _id(item) -> str:
    return " ".join(item[1])[:90]


def test_the_documents_hold_the_commands_we_expect_to_check():
    # Guards the parser above: if it stopped finding commands, every other test would pass vacuously.
    scripts = {argv[0] for _, argv in SCRIPT_COMMANDS}
    assert {"experiments/metaworld.py", "benchmarks/training.py", "benchmarks/labeling.py",
            "benchmarks/data_report.py"} <= scripts  # fmt: skip
    assert len(SCRIPT_COMMANDS) >= 12
    assert any(argv[:2] == ["-m", "plare_jax.testing.loopback_server"] for _, argv in MODULE_COMMANDS)


def test_the_parser_reads_every_form_a_command_takes_in_markdown():
    text = ("- a list item\n\n  ```bash\n  python in_list.py --a 1 \\\n    --b 2\n  ```\n\n"
            "```bash\npython fenced.py\n```\n\n    python indented.py\n\nprose `python inline.py --c` and\n"
            "```python\nimport not_a_command\n```\n")
    assert [" ".join(line.split()) for line in shell_lines(text)] == [
        "python in_list.py --a 1 --b 2", "python fenced.py", "python indented.py", "python inline.py --c"]


def load_script(path: Path):
    """Imports a script as a module (registered, so that tyro can resolve its annotations); its main does not run."""
    name = "documented_" + re.sub(r"\W", "_", str(path.relative_to(ROOT)))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_no_documented_command_needs_pythonpath():
    # `pip install -e .` is the whole setup: a command that only works with PYTHONPATH=. breaks
    # for a user who copies it into another shell or runs it from another folder.
    for document in DOCUMENTS:
        for line in document.read_text().splitlines():
            assert "PYTHONPATH=" not in line, f"{document.name}: {line.strip()}"


@pytest.mark.parametrize("doc,argv", SCRIPT_COMMANDS, ids=[_id(c) for c in SCRIPT_COMMANDS])
def test_documented_options_parse(doc, argv, monkeypatch):
    script = ROOT / argv[0]
    assert script.is_file(), f"{doc} runs {argv[0]}, which does not exist"
    monkeypatch.chdir(ROOT)
    module = load_script(script)
    assert hasattr(module, "parse_args"), f"{argv[0]} has no parse_args(argv) to check its documented options with"
    # A placeholder in a documented template (TASK, S, X) stands for a value: "0" parses as any type.
    args = ["0" if re.fullmatch(r"[A-Z][A-Z_]*", token) else token for token in argv[1:]]
    try:
        module.parse_args(args)
    except SystemExit as exit:  # tyro / argparse print the problem and exit 2 (0 after --help)
        if exit.code in (0, None) and "--help" in argv:
            return
        pytest.fail(f"{doc}: `python {' '.join(argv)}` does not parse (exit {exit.code})")


@pytest.fixture(scope="module")
def installed_env(tmp_path_factory):
    """The environment after `pip install -e .`: plare_jax importable, the repository itself not on the path."""
    site = tmp_path_factory.mktemp("site")
    (site / "plare_jax").symlink_to(ROOT / "plare_jax", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    return env


def run_documented(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, f"`python {' '.join(argv)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


HELP_FORMS = sorted({argv[0] for _, argv in SCRIPT_COMMANDS}) + sorted(
    {f"-m {argv[1]}" for _, argv in MODULE_COMMANDS}
)


@pytest.mark.parametrize("target", HELP_FORMS)
def test_help_runs_from_a_fresh_install(target, installed_env):
    out = run_documented([*target.split(), "--help"], installed_env).stdout
    assert "usage" in out.lower() and "--" in out


def _tiny_form(argv: list[str], out: Path) -> list[str]:
    """A benchmark command as written, plus --tiny, a short timed block and a private output file."""
    tokens, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--out" or (token == "--seconds" and argv[0].endswith("training.py")):  # replaced below
            skip = True
            continue
        tokens.append(token)
    tokens += ["--out", str(out)]
    if argv[0].endswith("training.py"):
        tokens += ["--seconds", "0.05"]
    return tokens if "--tiny" in tokens else [*tokens, "--tiny"]


TINY_COMMANDS = [
    (doc, argv) for doc, argv in SCRIPT_COMMANDS
    if argv[0] in ("benchmarks/training.py", "benchmarks/labeling.py", "benchmarks/methods.py") and "--base-url" not in argv
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("doc,argv", TINY_COMMANDS, ids=[_id(c) for c in TINY_COMMANDS])
def test_benchmark_commands_run_tiny(doc, argv, installed_env, tmp_path):
    out = tmp_path / "result.json"
    proc = run_documented(_tiny_form(argv, out), installed_env)
    assert out.is_file() and "|" in proc.stdout  # wrote its JSON and printed its table


def library_snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def test_readme_library_snippet_runs_as_written(installed_env, tmp_path):
    (snippet,) = [code for code in library_snippets() if "cpl_loss" in code]  # "Using the CPL loss ..."
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=installed_env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss = float(re.search(r"CPL loss ([0-9.]+)", proc.stdout).group(1))
    assert loss > 0 and "gradient shape (39, 4)" in proc.stdout


def _layout_rows() -> dict[str, str]:
    """README's layout table: first cell (the paths) -> second cell (what they hold)."""
    text = (ROOT / "README.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`") and ("/" in cells[0]):
            rows[cells[0]] = cells[1]
    return rows


def test_the_layout_table_matches_the_tree():
    rows = _layout_rows()
    assert rows, "README.md has no layout table"
    for paths in rows:
        first, *others = re.findall(r"`([^`]+)`", paths)
        folder = Path(first) if first.endswith("/") else Path(first).parent
        assert (ROOT / first).exists(), f"README layout names {first}, which does not exist"
        for name in others:  # siblings given by name only, e.g. `learner.py`
            assert (ROOT / folder / name).exists(), f"README layout names {folder / name}, which does not exist"
    # The pipeline's row names its modules file by file: each one it names exists, and none is left out.
    pipeline = ROOT / "plare_jax" / "pipeline"
    named = set(re.findall(r"`(\w+\.py)`", rows["`plare_jax/pipeline/`"]))
    modules = {p.name for p in pipeline.glob("*.py") if p.name != "__init__.py"}
    assert named - modules == set(), f"README's row of plare_jax/pipeline/ names {sorted(named - modules)}, not there"
    assert modules - named == set(), f"README's row of plare_jax/pipeline/ leaves out {sorted(modules - named)}"
