"""DistributedDataParallel: two processes (gloo, CPU) train a model containing
lstmc.nn.LSTM on halves of a batch; after 5 steps their parameters equal those of one
process trained on the whole batch."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS, T, B, I, H = 5, 4, 8, 3, 5


class Regressor(torch.nn.Module):
    """A 2-layer lstmc LSTM and a linear head; forward returns the loss."""

    def __init__(self):
        import lstmc.nn as lnn

        super().__init__()
        torch.manual_seed(0)
        self.rnn = lnn.LSTM(I, H, num_layers=2, dtype=torch.float64)
        self.head = torch.nn.Linear(H, 1, dtype=torch.float64)

    def forward(self, x, target):
        y, _ = self.rnn(x)
        return torch.nn.functional.mse_loss(self.head(y[-1]), target)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    return x, torch.randn(B, 1, generator=g, dtype=torch.float64)


def _train(model, x, target):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(STEPS):
        optimizer.zero_grad()
        model(x, target).backward()
        optimizer.step()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = Regressor()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x, target = _data()
        half = slice(rank * B // 2, (rank + 1) * B // 2)
        _train(ddp, x[:, half].contiguous(), target[half])  # DDP averages the gradients
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_equals_single_process(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    single = Regressor()
    x, target = _data()
    _train(single, x, target)
    got = torch.load(out)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12,
                                   msg=lambda m, name=name: f"{name}: {m}")
