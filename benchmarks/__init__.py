"""tgbench's performance tracking: asv benchmarks (``benchmarks.py``) and a side-by-side comparison against the
plain-PyTorch reference (``compare.py``). See ``asv.conf.json`` at the repository root.

asv imports every module of this package to discover benchmarks (names starting with ``time_``, ``peakmem_``,
``track_``, ``mem_``, ``timeraw_``), so helpers here and in ``compare.py`` must never use those prefixes.
"""
