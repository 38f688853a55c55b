"""What surrounds a run: settings errors, loggers, the run summary."""
