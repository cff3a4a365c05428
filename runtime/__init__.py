"""What a registered model package needs to answer: load it, prompt it, run it.

The layer between ``adaptflow`` (settings, catalogue, errors) and the orchestration in
``tasks``/``flows`` and the serving code in ``registry``: training writes packages that these
modules read, and evaluation and serving both answer through them, so served and scored
answers match. Modules here import only ``adaptflow`` and third-party libraries, never
Prefect, ``tasks``, ``flows`` or ``registry`` (``tests/test_import_layers.py``), so loading a
served model does not load the orchestrator.
"""
