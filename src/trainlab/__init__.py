"""trainlab: training optimization and alignment of language models, measured.

Components (data, model, attention, train, ...) are importable on their own; the labs compose
them and the report renders their typed results.
"""

__version__ = "0.1.0"
