"""ASTRA's experiment harness, apart from the runtime (:mod:`astra`): the link lab (``links``),
rank emulation (``emulation``: N ranks timed one at a time and their schedule replayed over modelled
links), the baselines ASTRA is measured against (``baselines``), the benchmark driver (``bench``) and
the accuracy experiments (``train``). Nothing in :mod:`astra` imports it; the command line
(:mod:`astra_cli`) joins the two."""
