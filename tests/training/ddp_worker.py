"""Run by ``torchrun --nproc-per-node 2`` from test_ddp.py: trains the tiny model with the gloo
backend and saves each rank's final parameters as OUT/rank<R>.pt."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_data import TinyPairs, tiny_config  # noqa: E402

from asapnet_triton.training import Trainer  # noqa: E402


def main(out: str, steps: int) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    trainer = Trainer(tiny_config(Path(out) / "run", batch_size=4, max_steps=steps, checkpoint_every=2), TinyPairs(8))
    history = trainer.fit()
    state = {
        **{f"G.{k}": v for k, v in trainer.generator.state_dict().items()},
        **{f"D.{k}": v for k, v in trainer.discriminator.state_dict().items()},
    }
    torch.save(
        {"state": state, "history": history, "world_size": trainer.dist.world_size}, Path(out) / f"rank{rank}.pt"
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
