"""Stage 6, reading the results: report tables from run folders, published directions,
the release filter and the book's helpers.
"""
