"""One module per stage of `adm run`: ingest, train, sample, evaluate, register, report."""
