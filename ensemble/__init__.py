"""Ensembles: many runs of one configuration trained at once in one process (`hydra/launcher=ensemble`).

stacked   the members' weights as one (E, P) tensor, run under torch.func.vmap
optimizer AdamW over that tensor with per-member hyper-parameters
module    the LightningModule: one vectorised step, per-member divergence and stopping
members   which jobs can share an ensemble; each member's records, logs and summary
run       training one ensemble end to end
"""
