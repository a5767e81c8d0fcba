"""The course module: a teaching unit on memorization that runs on a laptop CPU.

- :mod:`.build` turns the instructor notebooks (``notebooks/course/*.ipynb``, solutions tagged
  once) into student versions, a solutions file and a class-results template
  (``memstudy course build``);
- :mod:`.checks` holds the checks that the exercises' ``check`` cells call: each prints
  ``correct`` or what is wrong, and never raises, so a student notebook fails only at a stub;
- :mod:`.labs` holds the few helpers the two labs need (the class table, planting your own
  copies and scoring every detector on them).

The chapters that go with the notebooks are in the book's "Course" part (``book/course/``).
"""
