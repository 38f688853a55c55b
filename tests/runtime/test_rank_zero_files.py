"""Under DDP every rank runs the launcher's code with the same weights: only the main process writes the run
folder's weight files (two processes writing one path can leave a torn file)."""
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from core.errors import NonFiniteLossError
from runtime.lifecycle.init_weights import fingerprint, prepare_init
from runtime.lifecycle.status import diverged


class Module(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 2)


def test_only_the_main_process_writes_init_pt(tmp_path, monkeypatch):
    net = nn.Linear(3, 2)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert prepare_init(net, tmp_path, None, 1.0) == fingerprint(net)  # every rank knows the fingerprint
    assert not (tmp_path / "init.pt").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    prepare_init(net, tmp_path, None, 1.0)
    saved = torch.load(tmp_path / "init.pt", weights_only=True)
    assert all(torch.equal(saved[name], value) for name, value in net.state_dict().items())


def test_only_the_main_process_writes_last_finite_pt(tmp_path, monkeypatch):
    module, err = Module(), NonFiniteLossError(7, float("nan"))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    part = diverged(module, tmp_path, err, say=lambda line: None)
    assert part["status"] == "diverged" and part["last_finite_weights"] == "checkpoints/last_finite.pt"
    assert not (tmp_path / "checkpoints" / "last_finite.pt").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    diverged(module, tmp_path, err, say=lambda line: None)
    saved = torch.load(tmp_path / "checkpoints" / "last_finite.pt", weights_only=True)
    assert all(torch.equal(saved[name], value) for name, value in module.net.state_dict().items())
