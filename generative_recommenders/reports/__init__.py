"""The report writers: the paper-style table of finished runs (``compare.py``), the GRE-B tables
(``greb_tables.py``) and the column-wide figures both draw (``figures.py``)."""
