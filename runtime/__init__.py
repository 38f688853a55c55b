"""What surrounds a run (docs/architecture.md): `config` (command line to objects), `run` (one run's life),
`logs` (where its numbers go) and `errors` (what a run reports)."""
