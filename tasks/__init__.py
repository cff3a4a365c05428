"""The work, as plain typed functions.

Each function that a flow calls has a thin Prefect wrapper next to it, named ``<function>_task``
(or is decorated directly when it is only ever a pipeline step). Tests call the plain functions.
Tasks take flat arguments, return small serialisable values (paths, URIs, ids, metric dicts)
and can be re-run idempotently.
"""
