"""The run pipeline, above everything else (docs/architecture.md): `config` (command line to objects), `lifecycle`
(one run's life, written once), `engines` (a solo run, an ensemble), `logs` (where its numbers go)."""
