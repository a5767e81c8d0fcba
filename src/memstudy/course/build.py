"""Student versions, a solutions file and a class-results template from one source.

The source is the instructor notebooks in ``notebooks/course/``. An exercise is written there
once, as a cell tagged ``solution``:

- a **code** solution starts with its task in comment lines, the first of them
  ``# Exercise ID: task in words``; the code below is the answer;
- a **written** (markdown) solution starts with ``**Exercise ID:** task in words`` as its first
  paragraph; the paragraphs below are the answer.

A cell tagged ``check`` follows a code exercise and calls :mod:`memstudy.course.checks`, which
prints ``correct`` or what is wrong and never raises.

:func:`build_course` writes, for each instructor notebook, a student version in which every
code solution is a stub (the task as comments, each answer name set to ``None``, then
``raise NotImplementedError(task)``) and every written answer is a blank to fill; the check
cells stay, with their source folded. Beside them: ``solutions.md`` (every task with its
answer, for the teacher) and ``class_results_template.csv`` (the header of the class table the
first lab fills). ``memstudy course build --help`` runs it from the shell.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..runio import results_root, write_bytes_atomic

SOLUTION, CHECK, STUB = "solution", "check", "exercise"  # cell tags
_CODE_HEAD = re.compile(r"^#\s*Exercise\s+([\w.-]+)\s*:\s*(.+)$")
_TEXT_HEAD = re.compile(r"^\*\*Exercise\s+([\w.-]+)\s*:?\*\*\s*:?\s*(.+)$", re.S)
TEMPLATE = "class_results_template.csv"


@dataclass(frozen=True)
class Exercise:
    """One exercise as written in an instructor notebook."""

    notebook: str  # file name of the instructor notebook
    id: str  # e.g. "D1", unique across the course
    task: str  # the task in words (what the student sees)
    kind: str  # "code" or "written"
    solution: str  # the answer: code, or markdown text
    answers: tuple[str, ...] = ()  # names a code solution defines (set to None in the stub)


class CourseError(ValueError):
    """An instructor notebook breaks the conventions above; the message says where and how."""


def default_source() -> Path:
    """``notebooks/course`` of the checkout this package was installed from (editable)."""
    return Path(__file__).resolve().parents[3] / "notebooks" / "course"


def instructor_notebooks(src: str | Path | None = None) -> list[Path]:
    """The instructor notebooks, in file-name order (their names start with the order)."""
    src = Path(src) if src else default_source()
    paths = sorted(src.glob("*.ipynb"))
    if not paths:
        raise CourseError(f"no instructor notebooks (*.ipynb) in {src}: pass --src with the "
                          "folder that holds them (notebooks/course in a memstudy checkout).")
    return paths


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def parse_exercise(cell, notebook: str, index: int, checked: set[str] | None = None) -> Exercise:
    """Read the task and answer of one ``solution`` cell, or say what is missing.

    ``checked`` are the names its check cell reads: only those become the stub's answer names
    (helper variables of the solution would give its steps away). None keeps them all.
    """
    text = cell.source.strip()
    where = f"{notebook}, cell {index}"
    if cell.cell_type == "code":
        lines = text.splitlines()
        head = _CODE_HEAD.match(lines[0].strip()) if lines else None
        if not head:
            raise CourseError(f"{where} is tagged 'solution' but does not start with "
                              "'# Exercise ID: task in words'. Add that comment line.")
        task = [head.group(2).strip()]
        body_start = 1
        for line in lines[1:]:  # further comment lines continue the task
            if not line.startswith("#"):
                break
            task.append(line.lstrip("#").strip())
            body_start += 1
        solution = "\n".join(lines[body_start:]).strip()
        if not solution:
            raise CourseError(f"{where}: exercise {head.group(1)} has a task but no solution code.")
        names = answer_names(solution, where)
        if checked is not None:
            names = tuple(n for n in names if n in checked)
        return Exercise(notebook, head.group(1), " ".join(t for t in task if t), "code",
                        solution, names)
    if cell.cell_type == "markdown":
        first, _, answer = text.partition("\n\n")
        head = _TEXT_HEAD.match(first)
        if not head or not answer.strip():
            raise CourseError(f"{where} is tagged 'solution' but does not start with a paragraph "
                              "'**Exercise ID:** task in words' followed by the answer.")
        return Exercise(notebook, head.group(1), " ".join(head.group(2).split()), "written",
                        answer.strip())
    raise CourseError(f"{where}: only code and markdown cells can be tagged 'solution'.")


def answer_names(code: str, where: str = "") -> tuple[str, ...]:
    """Top-level names a solution defines (assignments, functions, classes), in order."""
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        raise CourseError(f"{where}: the solution does not parse ({err}).") from None
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        else:
            continue
        names += [n for n in targets if n not in names]
    return tuple(names)


def names_read(code: str) -> set[str]:
    """Every identifier a piece of code mentions (for a check cell: the answers it reads)."""
    try:
        return {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name)}
    except SyntaxError:
        return set()


def stub_source(ex: Exercise) -> str:
    """The code a student sees in place of a solution: the task, the names, the raise."""
    words = f"Exercise {ex.id}: {ex.task}"
    lines = ["# " + line for line in textwrap.wrap(words, 92)]
    lines.append("# Replace the `raise` line with your code; the check below says whether it is right.")
    # The answer names start as None, so that the check cell below can say "not answered
    # yet" instead of failing on a missing name: the notebook then fails only at stubs.
    lines += [f"{name} = None" for name in ex.answers]
    lines.append(f"raise NotImplementedError({words!r})")
    return "\n".join(lines)


def student_notebook(nb, name: str) -> tuple[nbformat.NotebookNode, list[Exercise]]:
    """The student version of one instructor notebook, and the exercises taken out of it."""
    out = copy.deepcopy(nb)
    exercises = []
    for index, cell in enumerate(out.cells):
        tags = _tags(cell)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if SOLUTION in tags:
            check = next((c for c in out.cells[index + 1:] if CHECK in _tags(c)), None)
            ex = parse_exercise(cell, name, index,
                                names_read(check.source) if check is not None else None)
            exercises.append(ex)
            if ex.kind == "code":
                cell.source = stub_source(ex)
            else:
                cell.source = f"**Exercise {ex.id}:** {ex.task}\n\n*Your answer:* …"
            cell.metadata["tags"] = [t for t in tags if t != SOLUTION] + [STUB]
        elif CHECK in tags:
            # Folded in the student's view: the check computes the expected answer.
            cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
    banner = nbformat.v4.new_markdown_cell(
        f"*Student version of `{name}`, written by `memstudy course build`.* Each cell that "
        "starts with `# Exercise` raises `NotImplementedError` until you replace its `raise` "
        "line with your code; the cell after it checks your answer and prints `correct` or what is "
        "wrong. Written exercises end in *Your answer:* — write it there.")
    banner.metadata["tags"] = ["banner"]
    out.cells.insert(0, banner)
    out.metadata["memstudy_course"] = {"source": name, "exercises": [e.id for e in exercises]}
    return out, exercises


def list_exercises(src: str | Path | None = None) -> list[Exercise]:
    """Every exercise of the course, in notebook order; ids must be unique."""
    found: list[Exercise] = []
    for path in instructor_notebooks(src):
        _, exercises = student_notebook(nbformat.read(path, as_version=4), path.name)
        found += exercises
    seen: dict[str, str] = {}
    for ex in found:
        if ex.id in seen:
            raise CourseError(f"exercise id {ex.id} is used in {seen[ex.id]} and {ex.notebook}: "
                              "give each exercise its own id.")
        seen[ex.id] = ex.notebook
    return found


def exercises_markdown(notebook: str, src: str | Path | None = None) -> str:
    """The exercises of one instructor notebook as a markdown list (for the book's pages)."""
    found = [e for e in list_exercises(src) if e.notebook == notebook]
    if not found:
        raise CourseError(f"no exercises in {notebook}: name an instructor notebook of "
                          f"{Path(src) if src else default_source()}.")
    return "\n".join(f"- **{e.id}** ({e.kind}) {e.task}" for e in found)


def solutions_markdown(exercises: list[Exercise]) -> str:
    """The teacher's solutions file: every task with its answer, by notebook."""
    parts = ["# Course solutions (for the teacher)\n",
             "Written by `memstudy course build` from the instructor notebooks; do not hand out.\n"]
    notebook = None
    for ex in exercises:
        if ex.notebook != notebook:
            notebook = ex.notebook
            parts.append(f"\n## {notebook}\n")
        parts.append(f"\n### Exercise {ex.id} ({ex.kind})\n\n{ex.task}\n")
        parts.append(f"\n```python\n{ex.solution}\n```\n" if ex.kind == "code"
                     else f"\n{ex.solution}\n")
    return "".join(parts)


def build_course(src: str | Path | None = None, out: str | Path | None = None) -> dict[str, Path]:
    """Write student notebooks, ``solutions.md`` and the class-results template.

    Parameters
    ----------
    src : folder of instructor notebooks; default :func:`default_source`.
    out : output folder; default ``$MEMSTUDY_RESULTS/course``.

    Returns
    -------
    dict
        ``{"student": folder, "solutions": file, "template": file}``.
    """
    from .labs import CLASS_COLUMNS

    out = Path(out) if out else results_root() / "course"
    exercises = list_exercises(src)  # validates every notebook before anything is written
    for path in instructor_notebooks(src):
        nb, _ = student_notebook(nbformat.read(path, as_version=4), path.name)
        write_bytes_atomic(out / "student" / path.name, nbformat.writes(nb).encode())
    write_bytes_atomic(out / "solutions.md", solutions_markdown(exercises).encode())
    write_bytes_atomic(out / TEMPLATE, (",".join(CLASS_COLUMNS) + "\n").encode())
    return {"student": out / "student", "solutions": out / "solutions.md",
            "template": out / TEMPLATE}


def add_parser(commands) -> None:
    """The ``memstudy course`` subcommand (called by :mod:`memstudy.cli`)."""
    epilog = ("example:\n  memstudy course build --out handout\n      handout/student/*.ipynb, "
              "handout/solutions.md, handout/class_results_template.csv\n\ncost: a few seconds "
              "(imports); runs no notebook.")
    course = commands.add_parser(
        "course", help="build the course's student notebooks and solutions",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
        description="The teaching module: write student versions of the instructor notebooks.")
    actions = course.add_subparsers(required=True, metavar="ACTION")
    build = actions.add_parser(
        "build", help="student notebooks, solutions file and class-results template",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
        description="Replace every solution of the instructor notebooks by a stub that raises\n"
        "NotImplementedError with the task in words; keep the checks; write the solutions\n"
        "and an empty class-results table beside them.")
    build.add_argument("--src", type=Path, default=None,
                       help=f"instructor notebooks (default: {default_source()})")
    build.add_argument("--out", type=Path, default=None,
                       help="output folder (default: $MEMSTUDY_RESULTS/course)")
    build.set_defaults(func=_build_command)


def _build_command(args: argparse.Namespace) -> int:
    try:
        paths = build_course(args.src, args.out)
    except CourseError as err:
        print(f"memstudy course build: error: {err}", file=sys.stderr)
        return 2
    exercises = list_exercises(args.src)
    print(f"student notebooks: {paths['student']}\nsolutions: {paths['solutions']}\n"
          f"class table template: {paths['template']}\n{len(exercises)} exercises:")
    for ex in exercises:
        print(f"  {ex.id:5s} {ex.notebook:24s} {ex.task}")
    return 0
