"""The course module: instructor notebooks run with smoke parameters and every check says
"correct"; the student versions are generated, hold no solution code, and fail only where a
stub stands."""

import csv

import nbformat
import papermill as pm
import pytest
from nbclient import NotebookClient
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from memstudy.course import build, checks, labs

NOTEBOOKS = build.default_source()


def smoke_parameters(name: str, tmp_path) -> dict:
    """Seconds-long parameters of each instructor notebook (its defaults are the real lab)."""
    planted = {"n_train": 16, "n_holdout": 16, "n_per_change": 4, "n_novel": 16}
    return {
        "c1_sharing.ipynb": {"n_patients": 6},
        "c2_diffusion.ipynb": {},
        "c3_detection.ipynb": {"dataset_size": 16, "holdout_size": 16, "n_copies": 8,
                               "n_new": 16},
        "c4_reading.ipynb": {},
        "lab1_cell.ipynb": {"train_steps": 10, "ae_steps": 5, "encoder_steps": 5, "num_gen": 16,
                            "holdout_size": 16, "ddim_steps": 5, "student": "smoke",
                            "run_dir": str(tmp_path / "lab1_run"),
                            "class_table": str(tmp_path / "class.csv")},
        "lab2_planted.ipynb": {**planted, "encoder_steps": 5},
    }[name]


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def _solution_lines(nb) -> list[str]:
    """Lines of solution code long enough to be telling (not `)` or a blank)."""
    lines = []
    for cell in nb.cells:
        if build.SOLUTION in _tags(cell) and cell.cell_type == "code":
            lines += [ln.strip() for ln in cell.source.splitlines()
                      if len(ln.strip()) > 12 and not ln.strip().startswith("#")]
    return lines


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    return build.build_course(out=out)


def test_every_code_exercise_is_followed_by_its_check():
    for path in build.instructor_notebooks():
        cells = nbformat.read(path, as_version=4).cells
        for i, cell in enumerate(cells):
            if build.SOLUTION in _tags(cell) and cell.cell_type == "code":
                assert i + 1 < len(cells) and build.CHECK in _tags(cells[i + 1]), (path.name, i)


def test_build_writes_students_solutions_and_template(course):
    exercises = build.list_exercises()
    assert len({e.id for e in exercises}) == len(exercises) >= 20
    for path in build.instructor_notebooks():
        instructor = nbformat.read(path, as_version=4)
        student = nbformat.read(course["student"] / path.name, as_version=4)
        text = "\n".join(c.source for c in student.cells)
        for line in _solution_lines(instructor):
            assert line not in text, (path.name, line)
        stubs = [c for c in student.cells if build.STUB in _tags(c)]
        assert len(stubs) == sum(build.SOLUTION in _tags(c) for c in instructor.cells)
        assert all("NotImplementedError" in c.source for c in stubs if c.cell_type == "code")
        assert not any(build.SOLUTION in _tags(c) for c in student.cells)
        assert not any(c.get("outputs") for c in student.cells if c.cell_type == "code")
        assert all(c.metadata["jupyter"]["source_hidden"] for c in student.cells
                   if build.CHECK in _tags(c))  # the checks compute the answers: folded
    solutions = course["solutions"].read_text()
    assert all(f"Exercise {e.id} " in solutions and e.solution in solutions for e in exercises)
    with open(course["template"]) as f:
        assert next(csv.reader(f)) == labs.CLASS_COLUMNS


def test_a_solution_without_its_task_is_refused():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("tau = 0.9")])
    nb.cells[0].metadata["tags"] = ["solution"]
    with pytest.raises(build.CourseError, match="x.ipynb, cell 0.*# Exercise ID: task"):
        build.student_notebook(nb, "x.ipynb")


def test_a_stub_sets_only_the_checked_names_and_raises_the_task():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("# Exercise X1: compute tau\n# from holdout\nq = 95\ntau = q / 100"),
        nbformat.v4.new_code_cell("checks.tau(tau, sims)")])
    nb.cells[0].metadata["tags"], nb.cells[1].metadata["tags"] = ["solution"], ["check"]
    student, (ex,) = build.student_notebook(nb, "x.ipynb")
    assert ex.task == "compute tau from holdout" and ex.answers == ("tau",)
    namespace = {}
    with pytest.raises(NotImplementedError, match="Exercise X1: compute tau from holdout"):
        exec(student.cells[1].source, namespace)
    assert namespace["tau"] is None and "q" not in namespace


def test_checks_say_correct_or_what_is_wrong(capsys):
    sims = [0.1, 0.2, 0.3, 0.9]
    checks.rate_above(0.25, sims, 0.5, "copy_rate", "T")
    assert capsys.readouterr().out == "correct\n"
    checks.rate_above(1, sims, 0.5, "copy_rate", "T")
    assert "not yet right" in (out := capsys.readouterr().out) and "a count" in out
    checks.rate_above(None, sims, 0.5, "copy_rate", "T")
    assert "not answered yet" in capsys.readouterr().out
    checks.excess_interval("wide", [1, 0, 1], [0, 0, 1], "T")
    assert "give two numbers" in capsys.readouterr().out


def test_class_table_replaces_a_students_row_and_summarizes_by_setting(tmp_path):
    path = tmp_path / "class.csv"
    base = {c: 0 for c in labs.CLASS_COLUMNS} | {"student": "ada", "dataset_size": 8,
                                                  "augmentation": "none", "unet_preset": "S",
                                                  "train_steps": 1000, "detector": "pixel",
                                                  "config_digest": "aaa"}
    labs.add_to_class_table(base | {"excess": 0.5, "excess_lo": 0.3}, path)
    labs.add_to_class_table(base | {"excess": 0.6, "excess_lo": 0.4}, path)  # a rerun: replaced
    table = labs.add_to_class_table(base | {"student": "bo", "seed": 1, "config_digest": "bbb",
                                            "excess": 0.0, "excess_lo": -0.1}, path)
    assert len(table) == 2 and list(table.columns) == labs.CLASS_COLUMNS
    (row,) = labs.class_summary(table).to_dict("records")
    assert (row["runs"], row["seeds"], row["runs_clear_of_null"]) == (2, 2, 1)
    assert row["excess_mean"] == pytest.approx(0.3) and row["excess_max"] == pytest.approx(0.6)


def test_pretend_generator_knows_its_copies():
    from memstudy import RunConfig
    from memstudy.detect.factory import make_detector
    from memstudy.metrics.scoring import score

    cfg = RunConfig.from_params({"dataset_size": 16, "holdout_size": 32})
    sets, gen_set, is_copy = labs.pretend_generator(cfg, n_copies=16, n_new=32, noise=0.0)
    train, holdout = sets.tensors()
    assert is_copy.sum() == 16 and len(gen_set) == 48
    found = score(make_detector("pixel").fit(train), train, holdout, gen_set)
    assert (found.sim_gen_train[is_copy] > 0.999).all()  # exact copies match their source
    assert (found.sim_gen_train[~is_copy] < 0.999).all()  # new patients never do


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_instructor_and_student_versions_run(name, course, tmp_path):
    params = smoke_parameters(name, tmp_path)
    # The instructor notebook runs clean, and every check says "correct".
    done = pm.execute_notebook(str(NOTEBOOKS / name), str(tmp_path / "instructor.ipynb"),
                               parameters=params, progress_bar=False, cwd=str(tmp_path))
    check_outputs = [_text(c) for c in done.cells if build.CHECK in _tags(c)]
    assert check_outputs and all(t.strip() == checks.CORRECT for t in check_outputs), check_outputs
    # The student version runs to the end with errors allowed: every error is a stub's
    # NotImplementedError, every code stub raised one, and every check says "not answered".
    # (papermill's loader gives every cell a tags list, which its parameterizer expects)
    student = parameterize_notebook(load_notebook_node(str(course["student"] / name)), params)
    NotebookClient(student, allow_errors=True, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    failed = {i for i, c in enumerate(student.cells)
              if any(o.output_type == "error" for o in c.get("outputs", []))}
    stubs = {i for i, c in enumerate(student.cells)
             if build.STUB in _tags(c) and c.cell_type == "code"}
    assert failed == stubs, [student.cells[i].outputs for i in failed - stubs]
    for i in stubs:
        (error,) = [o for o in student.cells[i].outputs if o.output_type == "error"]
        assert error.ename == "NotImplementedError"
    for cell in student.cells:
        if build.CHECK in _tags(cell):
            assert "not answered yet" in _text(cell), _text(cell)
    if name == "lab1_cell.ipynb":  # both runs added the same student's row: it is there once
        with open(params["class_table"]) as f:
            rows = list(csv.DictReader(f))
        assert [r["student"] for r in rows] == ["smoke"] and list(rows[0]) == labs.CLASS_COLUMNS
