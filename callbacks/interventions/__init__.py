"""Callbacks that change training: `grokfast` (Lee et al.'s gradient filter between backward and the step),
`temperature` (annealing a net's temperature over the run)."""
