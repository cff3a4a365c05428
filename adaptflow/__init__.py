"""adaptflow: adapt open language models to a team's own data.

Import cost matters here: ``adaptflow --help`` must start fast, so this package imports no
heavy library at module level. torch, transformers, prefect and mlflow load lazily where used.
"""

__version__ = "0.1.0"
