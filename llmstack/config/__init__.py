"""models.ini and the files beside it, as values: the schema, the reader, the demo stack."""
