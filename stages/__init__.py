"""The DVC entry points: ``dvc.yaml`` runs ``python -m stages.<name>``, and each module only hands the body
``pipeline.stages.<name>.run`` to :func:`pipeline.cli.run` (arguments, params, the one-line error contract).

Two packages on purpose: this one is what DVC and a user type, outside the library; ``pipeline.stages`` is
the library's stage bodies, which tests, the sweep and other stages (``final`` reuses ``pretrain`` and
``evaluate``) import without running a command line.
"""
