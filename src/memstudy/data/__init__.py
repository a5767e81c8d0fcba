"""Stage 1 of the pipeline, the data: the generated cohort, patient-level splits, the
training / holdout sets of a run, and readers of local real data sets.
"""
