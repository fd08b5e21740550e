"""One module per DVC stage, each with ``run(params, args)``: the stage's whole body.

``stages/<name>.py`` (what ``dvc.yaml`` runs) are thin shells that hand ``run`` to :func:`pipeline.cli.run`,
which parses ``--params`` and turns bad input into one line and exit code 2.
"""
