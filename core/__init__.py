"""The ground floor: what every layer agrees on and nothing of the project is imported by. `errors` (a bad setting
as one line naming its key, a diverged run, a stop signal), `output` (what every net returns), `device_peaks`
(accelerators' peak FLOP/s), `run_name` (what a run is called, resolvable wherever a saved config is read)."""
