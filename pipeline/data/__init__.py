"""Data: sources -> uint8 arrays (``sources``), the prepared format (``format``, over ``shards``), one
splitter (``splits``) and the pre-processing shared with the service (``preprocess``)."""
