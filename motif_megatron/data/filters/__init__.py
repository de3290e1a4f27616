"""Document filters, one class per filter; each returns None to keep or the reason to drop.

The settings the command line offers live here, importable without datatrove (``--help`` stays
fast)."""

MIN_SCRIPT_RATIO = 0.3
"""The least share of the language's script among letters: the corpus pipeline's default too."""

QUALITY_FILTERS = ("gopher", "c4", "fineweb")
"""datatrove's quality filters (:mod:`motif_megatron.data.filters.quality`)."""
