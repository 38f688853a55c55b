"""How a run holds its net(s) and steps them: a solo run, or an ensemble of members trained at once in one process
(`hydra/launcher=ensemble`): `members` (which jobs can share an ensemble; each member's records), `ensemble`."""
