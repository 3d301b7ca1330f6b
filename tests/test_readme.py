"""The README's command lines stay true: every `--flag` it names exists in the parser of the command that takes it,
and every file of the repository it names exists.

The parsers are captured as the CLIs build them (`--help` with `argparse.ArgumentParser` recorded), so an option
renamed or removed in the code fails here until the README follows.
"""

import argparse
import contextlib
import importlib
import io
import re
import sys
from pathlib import Path

import pytest

from diffusers_repa import convert, evaluate, evaluate_alignment, sample

from .train_fixtures import training_module

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
# Our flags use underscores; hyphenated ones (`--batch-size`) are the official scripts'.
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_]*(?:\[[a-z0-9_]+ ?[A-Z]*\])?(?![\w-])")
# Flags of other tools that the README names: accelerate launch, SLURM, ruff.
OTHER_TOOLS_FLAGS = {"--num_processes", "--multi_gpu", "--cpu", "--signal", "--check"}


def _options_of(build, argv: list[str]) -> set[str]:
    """Every option string of every `ArgumentParser` (sub-commands included) built while `build(argv)` runs."""
    parsers: list[argparse.ArgumentParser] = []
    original_init = argparse.ArgumentParser.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        parsers.append(self)

    argparse.ArgumentParser.__init__ = recording_init
    try:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
            build(argv)
    finally:
        argparse.ArgumentParser.__init__ = original_init
    return {option for parser in parsers for action in parser._actions for option in action.option_strings}


def _benchmark_module(name: str):
    benchmarks = str(REPO_ROOT / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    return importlib.import_module(name)


def _main_with_argv(main):
    def build(argv):
        saved, sys.argv = sys.argv, ["prog", *argv]
        try:
            main()
        finally:
            sys.argv = saved

    return build


@pytest.fixture(scope="module")
def cli_options() -> dict[str, set[str]]:
    """Option strings per command, keyed by how the README invokes it."""
    return {
        "training/train_repa.py": _options_of(training_module("train_repa").parse_args, ["--help"]),
        "training/prepare_latents.py": _options_of(training_module("prepare_latents").parse_args, ["--help"]),
        "training/prepare_demo_encoder.py": _options_of(
            _main_with_argv(training_module("prepare_demo_encoder").main), ["--help"]
        ),
        "diffusers_repa.sample": _options_of(sample.parse_args, ["grid", "--help"]),
        "diffusers_repa.convert": _options_of(convert._parse_args, ["--help"]),
        "diffusers_repa.evaluate reference": _options_of(evaluate.parse_reference_args, ["--help"]),
        "diffusers_repa.evaluate": _options_of(evaluate.parse_evaluate_args, ["--help"]),
        "diffusers_repa.evaluate_alignment": _options_of(evaluate_alignment.parse_args, ["--help"]),
        "benchmarks/repro_fashion_mnist.py": _options_of(_benchmark_module("repro_fashion_mnist").parse_args, ["-h"]),
        "benchmarks/bench_train.py": _options_of(_main_with_argv(_benchmark_module("bench_train").main), ["-h"]),
    }


def _readme_commands() -> list[tuple[str, str]]:
    """(command, its line with continuations joined) for each command line in the README's code blocks."""
    commands = []
    for block in re.findall(r"^(?:```bash\n(.*?)^```|((?:^    \S.*\n)+))", README, flags=re.M | re.S):
        text = re.sub(r"\\\n\s*", " ", block[0] or block[1])
        for line in text.splitlines():
            line = line.split("#")[0]
            if "run_demo.sh" in line:  # its extra arguments go to the trainer
                commands.append(("training/train_repa.py", line.split("run_demo.sh", 1)[1]))
                continue
            for command in (
                "diffusers_repa.evaluate reference", "diffusers_repa.evaluate_alignment", "diffusers_repa.evaluate",
                "diffusers_repa.sample", "diffusers_repa.convert", "training/train_repa.py",
                "training/prepare_latents.py", "benchmarks/repro_fashion_mnist.py",
            ):  # fmt: skip
                if command in line:
                    commands.append((command, line.split(command, 1)[1]))
                    break
    return commands


def test_the_readme_has_command_lines_to_check():
    found = {command for command, _ in _readme_commands()}
    assert {"training/train_repa.py", "training/prepare_latents.py", "diffusers_repa.sample"} <= found, found


def test_every_flag_of_a_readme_command_line_exists_in_that_command(cli_options):
    wrong = [
        f"{command}: {flag}"
        for command, line in _readme_commands()
        for flag in FLAG.findall(line)
        if flag not in cli_options[command]
    ]
    assert not wrong, f"README command lines use flags their command does not have: {wrong}"


def test_every_flag_the_readme_names_exists_in_one_of_our_clis(cli_options):
    known = set().union(*cli_options.values()) | OTHER_TOOLS_FLAGS
    named = set()
    for flag in FLAG.findall(README):
        # `--gradient_checkpointing[_blocks N]` names two flags.
        match = re.fullmatch(r"(--\w+)\[(\w+) ?[A-Z]*\]", flag)
        named |= {match[1], match[1] + match[2]} if match else {flag}
    assert not sorted(named - known), f"README names flags no CLI has: {sorted(named - known)}"


def test_files_the_readme_names_exist():
    paths = set(re.findall(r"`((?:src|training|benchmarks|scripts|tests|pipelines|\.ci)/[\w./-]+)`", README))
    missing = sorted(path for path in paths if not (REPO_ROOT / path).exists())
    assert not missing, f"README names files that do not exist: {missing}"


def test_every_file_of_the_layout_section_exists():
    layout = README.split("## Layout", 1)[1]
    names = set(re.findall(r"(?<![\w/.-])([\w/-]+\.(?:py|sh|md|json))\b", layout))
    tracked = [
        path.relative_to(REPO_ROOT).as_posix()
        for folder in ("src", "training", "benchmarks", "scripts", "tests", "pipelines")
        for path in (REPO_ROOT / folder).rglob("*")
    ]
    missing = sorted(name for name in names if not any(path.endswith("/" + name) for path in tracked))
    assert not missing, f"README's Layout names files that do not exist: {missing}"
