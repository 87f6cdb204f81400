"""PRN as pure nn.Modules: no optimiser, paths, DataLoader or device handling here."""

from prnad.model.builder import build_prn
from prnad.model.encoder import Encoder, build_encoder
from prnad.model.loss import prn_loss
from prnad.model.prn import PRN, PRNOutput

__all__ = ["PRN", "Encoder", "PRNOutput", "build_encoder", "build_prn", "prn_loss"]
