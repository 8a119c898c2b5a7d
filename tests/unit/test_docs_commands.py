"""Every command in README.md and docs/*.md runs as written, planned only (nothing trained or written beside a
temporary directory): each `python -m ...` and `make ...` line of a fenced shell block (`bash`, `sh`, `console` or
unlabelled; `text` blocks are printed output) is found and

- `python -m orchestrator ARGS`: run by the CLI with `--plan` added (`--cfg`, `--help` and `--list` as written);
- `python -m orchestrator.{resume,reeval,curate} SWEEP_DIR ARGS`: its overrides loaded against a planned sweep's
  stored config, as the command loads them first; its flags named in its usage;
- `python -m analysis ...`: parsed by the analysis CLI's own parser;
- `python -m bench.X ...`, `python -m pytest ...`: the module and the paths it names exist, its flags in its help;
- `make TARGET [VAR=...]`: the target is the Makefile's, `ARGS=` planned as the command the target runs.

A command inside `ray job submit ... -- python -m ...` or `docker compose ... exec ... python -m ...` is planned the
same way; the cluster part is only parsed. A repository path a command names (docker/compose.yaml) must exist.
Placeholders (`<sweep_id>`, `SWEEP_DIR`, `/models/...`, `[optional]`, `...`) are filled with the temporary
sweep and model."""
from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}
LAUNCHERS = {"python", "python3", ".venv/bin/python", "make", "ray", "docker", "kubectl", "envsubst", "nice",
             "/usr/bin/time", "time", "bash", "pytest"}
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
PYTHON_M = re.compile(r"(^|\s)(\S*/)?python3? -m ")  # `... && python3 -m bench.x` after other commands
SWEEP_COMMANDS = ("orchestrator.resume", "orchestrator.reeval", "orchestrator.curate")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str  # one logical line, continuations joined, comment dropped

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def shell_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, logical line) of every fenced shell block of a page."""
    lines, block, start, pending = [], None, 0, ""
    for number, raw in enumerate(page.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", raw)
        if fence:
            block = None if block is not None else fence.group(1)
            continue
        if block is None or block not in SHELL:
            continue
        text = raw.strip().removeprefix("$ ")
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        lines.append((start, pending + text))
        pending = ""
    return lines


def documented_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        for number, line in shell_lines(page):
            first = [w for w in line.split() if not ENV_ASSIGNMENT.match(w)][:1]
            if not (first and first[0] in LAUNCHERS or PYTHON_M.search(line)):  # a heading, a path list
                continue
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as exc:
                raise AssertionError(f"{page.name}:{number}: not a shell line ({exc}): {line}") from None
            words = [t for t in tokens if not ENV_ASSIGNMENT.match(t)]
            if words and (words[0] in LAUNCHERS or python_module(tokens)):
                commands.append(Command(page.relative_to(REPO).as_posix(), number, shlex.join(tokens)))
    return commands


def python_module(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) of the first `python -m MODULE ...` in a command line, up to a shell operator."""
    for i, token in enumerate(tokens[:-2]):
        if token.split("/")[-1] in ("python", "python3") and tokens[i + 1] == "-m":
            args = []
            for arg in tokens[i + 3:]:
                if arg in ("|", "||", "&&", ";", ">", "<", "2>&1"):
                    break
                args.append(arg)
            return tokens[i + 2], args
    return None


COMMANDS = list({c.text: c for c in reversed(documented_commands())}.values())[::-1]  # each command once


def filled(args: list[str], sandbox: "Sandbox") -> list[str]:
    """Placeholders replaced: optional brackets opened, `...` and glob-like (`train.*`) tokens dropped, a model
    path put at the test's model, a dataset file at a small one, a sweep directory at the test's sweep."""
    out = []
    for arg in args:
        arg = arg.removeprefix("[")
        while arg.endswith("]") and arg.count("]") > arg.count("["):  # `curation=small]`, not `a=[1,2]`
            arg = arg[:-1]
        if arg in ("", "...") or "*" in arg:
            continue
        key, _, value = arg.partition("=")
        if key == "model.path":
            arg = f"model.path={sandbox.model_dir}"
        elif key in ("task.path", "task.test_path") and not Path(value).exists():
            arg = f"{key}={sandbox.gsm8k_file}"
        elif not value and re.search(r"<[^>]+>|^SWEEP_DIR$|^CURATION_DIR$|/sweeps/[A-Za-z0-9_-]+$", arg):
            arg = str(sandbox.sweep_dir)
        out.append(arg)
    return out


@pytest.fixture(scope="module")
def planned_sweep(tmp_path_factory):
    """A sweep's directory as `python -m orchestrator` leaves it once planned (config.yaml, plan.json)."""
    import json
    from dataclasses import asdict

    from orchestrator.config import to_yaml
    from orchestrator.sweep import plan
    from store.layout import sweep_paths, write_text_atomic

    store = tmp_path_factory.mktemp("docs-store")
    cfg, sweep_id, specs = plan([f"store.root={store}", "sweep=small"])
    paths = sweep_paths(str(store), sweep_id)
    write_text_atomic(paths.file("config.yaml"), to_yaml(cfg))
    write_text_atomic(paths.file("plan.json"), json.dumps([asdict(s) for s in specs]))
    return Path(paths.sweep)


@dataclass(frozen=True)
class Sandbox:
    sweep_dir: Path
    model_dir: Path
    gsm8k_file: Path


@pytest.fixture
def sandbox(tmp_path, monkeypatch, planned_sweep, tiny_model_dir) -> Sandbox:
    """Where a documented command runs: a temporary working directory (./runs lands there), the environment the
    cluster groups read, a stored sweep, a model directory and a GSM8k-format file for the placeholders."""
    import json

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREMEM_STORE_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"})
                             + "\n" for i in range(256)))
    return Sandbox(planned_sweep, tiny_model_dir, gsm8k)


def run_cli(main, argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code or 0, out.getvalue() + err.getvalue()


def check_orchestrator(args: list[str]) -> None:
    from orchestrator.__main__ import main

    if not {"--plan", "--cfg", "--help", "-h", "--list"} & set(args):
        args = [*args, "--plan"]
    code, output = run_cli(main, args)
    assert code == 0, output[-2000:]


def check_sweep_command(module_name: str, args: list[str], sweep_dir: Path) -> None:
    """A command on a stored sweep: its flags are in its usage; its overrides load against the stored config."""
    module = importlib.import_module(module_name)
    flags = [a for a in args if a.startswith("--")]
    for flag in flags:
        assert flag in (module.__doc__ or ""), f"{module_name} names no {flag} in its usage"
    if flags:
        return
    from orchestrator.config import ConfigError
    from store.layout import open_sweep

    loaders = {"orchestrator.resume": lambda p, o: module.load_stored_config(p, o, module.ALLOWED),
               "orchestrator.reeval": module.load_reeval_config if hasattr(module, "load_reeval_config") else None,
               "orchestrator.curate": getattr(module, "load_curation_config", None)}
    paths = open_sweep(str(sweep_dir))
    try:
        loaders[module_name](paths, args[1:])
    except ConfigError as exc:
        raise AssertionError(f"{module_name} {' '.join(args)}: {exc}") from None


def check_argparse_module(module_name: str, args: list[str]) -> None:
    """`python -m analysis ...` parses; `python -m bench.X ...` is a module whose help names each flag."""
    if module_name == "analysis":
        from analysis.__main__ import _parser

        code, output = run_cli(lambda argv: _parser().parse_args(argv) and 0, args)
        assert code == 0, output[-2000:]
        return
    module = importlib.import_module(module_name)
    source = Path(module.__file__).read_text()
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert f'"{flag}"' in source, f"{module_name} has no option {flag}"


def check_paths(tokens: list[str]) -> None:
    """A repository path the command names (docker/compose.yaml, tests/unit/x.py) exists."""
    for token in tokens:
        path = token.split("=", 1)[-1]
        if re.match(r"^(docker|conf|tests|bench|docs|orchestrator|workers|analysis|store|\.ci)/[\w./-]*$", path):
            assert (REPO / path).exists(), f"{path} does not exist"


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_runs_as_written(command: Command, sandbox: Sandbox, request):
    sweep_dir = sandbox.sweep_dir
    tokens = shlex.split(command.text)
    for bucket in sorted(set(re.findall(r"s3://([a-z0-9.-]+)", command.text))):  # a bucket on a local S3 server
        from tests.conftest import make_bucket

        request.getfixturevalue("s3_server")
        with contextlib.suppress(Exception):  # made by an earlier command
            make_bucket(bucket)
    check_paths(tokens)
    words = [t for t in tokens if not ENV_ASSIGNMENT.match(t)]
    if words[0] == "make":
        assert words[1] in makefile_targets(), f"the Makefile has no target {words[1]}"
        make_args = dict(t.split("=", 1) for t in tokens if ENV_ASSIGNMENT.match(t) and t.split("=")[0] == "ARGS")
        if "ARGS" in make_args and words[1] == "sweep":
            check_orchestrator(filled(shlex.split(make_args["ARGS"]), sandbox))
        elif "ARGS" in make_args and words[1] == "curate":
            check_sweep_command("orchestrator.curate", [str(sweep_dir), *shlex.split(make_args["ARGS"])], sweep_dir)
        return
    found = python_module(tokens)
    if found is None:  # kubectl, envsubst: parsed (and their paths checked) only
        return
    module_name, args = found
    args = filled(args, sandbox)
    if module_name == "orchestrator":
        check_orchestrator(args)
    elif module_name in SWEEP_COMMANDS:
        check_sweep_command(module_name, args, sweep_dir)
    elif module_name == "pytest":
        check_paths(args)
    else:
        check_argparse_module(module_name, args)


def test_the_docs_show_commands_and_the_check_finds_them():
    """The extraction itself: the README's everyday commands are among those checked (a change of the fence or
    line format that hid them all would pass every parametrized case vacuously)."""
    readme = [c.text for c in COMMANDS if c.page == "README.md"]
    assert any(t.startswith("python -m orchestrator") for t in readme) and any(t.startswith("make") for t in readme)
    compose_gpu = ("orchestrator", ["cluster=compose", "train=gpu", "sampler=vllm_gpu", "sweep=gpu"])
    assert any(python_module(shlex.split(c.text)) == compose_gpu for c in COMMANDS
               if c.text.startswith("docker"))


@pytest.mark.parametrize("text", [
    "python -m orchestrator sweep=no_such_preset",  # a preset removed
    "python -m orchestrator train.no_such_field=1",  # a config key removed
    "python -m orchestrator.reeval SWEEP_DIR sampler.no_such_field=1",
    "python -m analysis fit --records PATH --no-such-flag 1",
    "python -m bench.evaluation --no-such-flag",
    "make no-such-target",
    "docker compose -f docker/no_such_file.yaml up",
])
def test_a_command_that_stopped_existing_fails_the_check(text, sandbox: Sandbox, request):
    """The check is not vacuous: a documented command naming what no longer exists fails it."""
    with pytest.raises(AssertionError):
        test_documented_command_runs_as_written(Command("page.md", 1, text), sandbox, request)


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_link_between_pages_resolves():
    """A relative link of README.md, CHANGELOG.md or docs/ names a file that exists, and its #anchor a heading of
    that page (a page or section renamed or removed fails here)."""
    broken = []
    for page in [*PAGES, REPO / "CHANGELOG.md"]:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # no links in code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_the_config_group_table_lists_every_group_and_preset():
    """docs/config.md's table of config groups names exactly conf/'s groups, each with exactly its presets (no
    group that conf/ lacks, no preset left out)."""
    from orchestrator.config import CONF_DIR

    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|", (REPO / "docs" / "config.md").read_text(), flags=re.M)
    table = {group: set(re.findall(r"`(\w+)`", presets)) for group, presets in rows}
    assert table == {g.name: {p.stem for p in g.glob("*.yaml")} for g in CONF_DIR.iterdir() if g.is_dir()}
