"""Reports of results: asr.reports.results reads and groups them from records, asr.reports.chips and
asr.reports.energy tabulate chips and converters, asr.reports.document writes RESULTS.md, results.csv and the
plots. Each module imports only those listed before it."""
