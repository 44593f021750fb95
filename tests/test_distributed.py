import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpm_lite import distributed

REPO = Path(__file__).resolve().parents[1]

# Runs under torchrun: trains a tiny ToyMLP for 4 steps with DDP (gloo) and records, per rank, what it wrote,
# the batches it saw and its final weights.
WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    import ddpm_lite.train as train_mod
    from ddpm_lite import checkpoint as ckpt
    from ddpm_lite.train import TrainConfig, Trainer

    out, rank = sys.argv[1], int(os.environ["RANK"])
    calls = []
    real_save = ckpt.save_pretrained
    def spy_save(*args, **kwargs):
        calls.append("save_pretrained")
        return real_save(*args, **kwargs)
    ckpt.save_pretrained = spy_save

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    y = (x[:, 0] > 0).long()
    config = TrainConfig(dataset="points", preset="toy_mlp", model_kwargs={"hidden": 16, "num_blocks": 1},
                         timesteps=50, batch_size=16, max_steps=4, max_seconds=None, warmup_steps=1, log_every=2,
                         save_every=2, sample_n=4, sample_steps=2, progress=True, out_dir=os.path.join(out, "run"))
    trainer = Trainer(config, dataset=(x, y))
    assert trainer.dist.world_size == 2 and torch.distributed.get_backend() == "gloo"
    seen = []
    real_next = trainer._next_batch
    def spy_next():
        xb, yb = real_next()
        seen.append(float(xb.sum()))
        return xb, yb
    trainer._next_batch = spy_next
    trainer.train()
    save_file({k: v.contiguous() for k, v in trainer.raw_model.state_dict().items()},
              os.path.join(out, f"weights{rank}.safetensors"))
    save_file({k: v.contiguous() for k, v in trainer.ema.module.state_dict().items()},
              os.path.join(out, f"ema{rank}.safetensors"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"calls": calls, "batch_sums": seen, "samples": len(trainer.samples), "step": trainer.step,
                   "history": len(trainer.history)}, f)
    trainer.close()
    assert not torch.distributed.is_initialized()
""")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_helpers_are_noops_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.setup("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert distributed.any_true(True) and not distributed.any_true(False)
    assert distributed.mean_across(2.5) == 2.5
    distributed.barrier()
    distributed.cleanup(info)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5"):
        distributed.env_info()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_two_processes_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # stay on the loopback interface
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    # replicas stay identical (DDP averages gradients; EMA follows the same weights)
    for kind in ("weights", "ema"):
        a, b = load_file(tmp_path / f"{kind}0.safetensors"), load_file(tmp_path / f"{kind}1.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kind
    # every rank sees different data
    assert r0["step"] == r1["step"] == 4 and len(r0["batch_sums"]) == 4
    assert all(s0 != s1 for s0, s1 in zip(r0["batch_sums"], r1["batch_sums"]))
    # only rank 0 writes checkpoints and samples
    assert r0["calls"] == ["save_pretrained"] * 2  # steps 2 and 4 (the final save is not repeated)
    assert r1["calls"] == [] and r1["samples"] == 0 and r0["samples"] == 1
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "history.json"]
    from ddpm_lite.checkpoint import load_trainer_state

    state = load_trainer_state(run)
    assert state["world_size"] == 2 and len(state["rng"]["per_rank"]["noise_generator"]) == 2
    assert not torch.equal(*state["rng"]["per_rank"]["noise_generator"])  # a distinct noise stream per rank
