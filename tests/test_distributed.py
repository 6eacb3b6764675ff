"""Multi-process runs on CPU with gloo: sharded evaluation, DDP training, checkpoints, setup errors.

The 2-process runs spawn fresh interpreters, so their workers live at module level.
"""

import functools
import json
import math
import socket
from collections import Counter
from pathlib import Path

import gin
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from generative_recommenders.atomic_files import atomic_torch_save, atomic_write_text
from generative_recommenders.data.dataset import SequenceView, collate_sequences
from generative_recommenders.data.sequence_format import load_sequence_dataset, write_sequence_dataset
from generative_recommenders.evaluation.ranking import evaluate_ranking
from generative_recommenders.modeling import losses
from generative_recommenders.trainer import distributed
from generative_recommenders.trainer.distributed import (
    DistributedContext,
    DistributedSetupError,
    ShardSampler,
)
from generative_recommenders.modeling.registry import ModelInputs, build_model
from generative_recommenders.trainer.train import train_step, warmup_factor

NUM_USERS, NUM_ITEMS, ITEMS_PER_USER = 61, 30, 10
MAX_LEN = ITEMS_PER_USER
HALF_BATCH, STEPS, NUM_NEGATIVES = 8, 3, 8
ONE_PROCESS = DistributedContext(0, 1, 0, torch.device("cpu"), None)


@pytest.fixture(scope="module", autouse=True)
def _single_process_setting():
    """No torchrun variables from outside, and the encoders' defaults (the workers see no gin)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in distributed.ENVIRONMENT:
            patch.delenv(name, raising=False)
        gin.clear_config()
        yield


@pytest.fixture
def no_spawn(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no process should be spawned")

    monkeypatch.setattr(distributed, "elastic_launch", refuse)


def _write_dataset(root: Path) -> Path:
    """Every user has the same number of items, so every batch half has as many positions."""
    rng = np.random.default_rng(0)
    rows = [
        (f"u{user}", f"i{item}", 1.0, 100 * step + user)
        for user in range(NUM_USERS)
        for step, item in enumerate(rng.choice(NUM_ITEMS, ITEMS_PER_USER, replace=False))
    ]
    write_sequence_dataset(root, pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]))
    return root


def _model() -> torch.nn.Module:
    return build_model("HSTU", ModelInputs(num_items=NUM_ITEMS, embedding_dim=16, num_positions=MAX_LEN + 2,
                                           dropout_rate=0.0))


def _wrap(model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    loss = functools.partial(losses.training_loss, sampling_strategy="local", num_negatives=NUM_NEGATIVES,
                             temperature=0.05)
    return distributed.wrap_for_training(model, loss, context)


def _negatives_of_positive(strategy, positive_ids, num_negatives, num_items, generator=None, candidate_ids=None):
    """Negatives fixed by the positive alone: the same for a row whichever rank holds it (no cold split here)."""
    assert candidate_ids is None
    offsets = torch.arange(1, num_negatives + 1, device=positive_ids.device)
    return (positive_ids.unsqueeze(1) * 7 + offsets) % num_items + 1


def _train_batch(data_dir: Path, start: int, size: int):
    view = SequenceView(load_sequence_dataset(data_dir), MAX_LEN, ignore_last_n=1)
    return collate_sequences([view[i] for i in range(start, start + size)])


def _train_steps(train_module, model, batch, context):
    """The trainer's step, STEPS times: the loss of each (averaged over the ranks), and this
    process's own loss of each (negatives are fixed and dropout is off: recomputing it draws nothing)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(0))
    local = getattr(train_module, "module", train_module)  # past DDP: no gradient sync
    means, own = [], []
    for _ in range(STEPS):
        with torch.no_grad():
            own.append(local(batch, context.device).item())
        means.append(train_step(train_module, batch, optimizer, scheduler, context))
    return means, own


def _evaluate_shard(context: DistributedContext, data_dir: Path, checkpoint: Path, out_dir: Path) -> None:
    model = _model().to(context.device)
    model.load_state_dict(torch.load(checkpoint, map_location=context.device))
    view = SequenceView(load_sequence_dataset(data_dir), MAX_LEN, ignore_last_n=0)
    sampler = ShardSampler(len(view), context.rank, context.world_size, shuffle=True, seed=3)
    loader = torch.utils.data.DataLoader(view, batch_size=8, sampler=sampler, collate_fn=collate_sequences)
    shard = evaluate_ranking(model, loader, context.device)
    total = distributed.reduce_metrics(shard, context)
    users = [int(u) for batch in loader for u in batch["user_index"]]
    record = {"users": users, "shard_count": shard.count, "count": total.count, "sums": total.sums}
    atomic_write_text(out_dir / f"rank{context.rank}.json", json.dumps(record))


def _train_shard(context: DistributedContext, data_dir: Path, initial: Path, out_dir: Path) -> None:
    losses.sample_negatives = _negatives_of_positive
    model = _model().to(context.device)
    model.load_state_dict(torch.load(initial, map_location=context.device))
    train_module = _wrap(model, context)
    batch = _train_batch(data_dir, context.rank * HALF_BATCH, HALF_BATCH)
    means, own_losses = _train_steps(train_module, model, batch, context)
    if context.is_main:
        atomic_torch_save(model.state_dict(), out_dir / "ddp_model.pt")
    per_rank = distributed.gather_objects((context.rank, own_losses), context)
    if context.is_main:
        atomic_write_text(out_dir / "losses.json", json.dumps({"mean": means, "per_rank": per_rank}))
    distributed.barrier(context)


def _two_process_worker(context: DistributedContext, data_dir: Path, initial: Path, out_dir: Path) -> None:
    _evaluate_shard(context, data_dir, initial, out_dir)
    _train_shard(context, data_dir, initial, out_dir)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """One spawned 2-process run (starting processes is the slow part) serves both comparisons."""
    root = tmp_path_factory.mktemp("two_processes")
    _write_dataset(root / "toy")
    torch.manual_seed(0)
    atomic_torch_save(_model().state_dict(), root / "initial.pt")
    distributed.launch(
        _two_process_worker, root / "toy", root / "initial.pt", root,
        nproc=2, backend="gloo", master_port=distributed.free_port(),
    )
    return root


def test_two_process_sharded_evaluation_gives_the_single_process_metrics(two_process_run):
    model = _model()
    model.load_state_dict(torch.load(two_process_run / "initial.pt"))
    view = SequenceView(load_sequence_dataset(two_process_run / "toy"), MAX_LEN, ignore_last_n=0)
    loader = torch.utils.data.DataLoader(view, batch_size=8, collate_fn=collate_sequences)
    single = evaluate_ranking(model, loader, torch.device("cpu"))

    ranks = [json.loads((two_process_run / f"rank{r}.json").read_text()) for r in range(2)]
    # 61 users: shards of 31 and 30, no padding duplicate, every user once.
    assert sorted(r["shard_count"] for r in ranks) == [30, 31]
    assert Counter(ranks[0]["users"] + ranks[1]["users"]) == Counter(range(NUM_USERS))
    for reduced in ranks:  # the all-reduce leaves the totals on every rank
        assert reduced["count"] == single.count == NUM_USERS
        for name, value in single.sums.items():
            if name.startswith("hr@"):  # counts of users: exact in any order
                assert reduced["sums"][name] == value
            else:  # float sums added in another order
                assert reduced["sums"][name] == pytest.approx(value, rel=1e-12, abs=1e-12)


def test_two_process_ddp_steps_match_one_process_on_the_doubled_batch(two_process_run, monkeypatch):
    monkeypatch.setattr(losses, "sample_negatives", _negatives_of_positive)
    initial, model = _model(), _model()
    initial.load_state_dict(torch.load(two_process_run / "initial.pt"))
    model.load_state_dict(initial.state_dict())
    doubled_batch = _train_batch(two_process_run / "toy", 0, 2 * HALF_BATCH)
    single_losses, _ = _train_steps(_wrap(model, ONE_PROCESS), model, doubled_batch, ONE_PROCESS)

    ddp_losses = json.loads((two_process_run / "losses.json").read_text())
    assert ddp_losses["mean"] == pytest.approx(single_losses, rel=1e-5)
    # Gathered in rank order; each rank's loss is its own half's, and the halves differ.
    (rank0, half0), (rank1, half1) = ddp_losses["per_rank"]
    assert (rank0, rank1) == (0, 1)
    assert [(a + b) / 2 for a, b in zip(half0, half1)] == pytest.approx(single_losses, rel=1e-5)
    assert half0[0] != pytest.approx(half1[0], rel=1e-3)
    assert single_losses[-1] < single_losses[0]
    saved = torch.load(two_process_run / "ddp_model.pt")
    assert not any(key.startswith("module.") for key in saved)
    reloaded = _model()
    reloaded.load_state_dict(saved)  # written by 2 processes, read by 1
    for name, trained in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], trained, rtol=1e-4, atol=1e-4)
    moved = max((model.state_dict()[n] - p).abs().max().item() for n, p in initial.state_dict().items())
    assert moved > 1e-2  # 3 Adam steps at lr 1e-2 move weights far beyond the tolerance


@pytest.mark.parametrize("num_examples", [0, 1, 5, 11])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_hold_every_example_exactly_once(num_examples, world_size, shuffle):
    shards = [list(ShardSampler(num_examples, r, world_size, shuffle, seed=5)) for r in range(world_size)]
    assert Counter(i for shard in shards for i in shard) == Counter(range(num_examples))
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [len(ShardSampler(num_examples, r, world_size)) for r in range(world_size)]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_follow_distributed_sampler_order_without_its_padding(shuffle, world_size):
    for rank in range(world_size):
        ours = ShardSampler(11, rank, world_size, shuffle, seed=4)
        padded = DistributedSampler(range(11), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=4)
        ours.set_epoch(2)
        padded.set_epoch(2)
        # The same order; DistributedSampler pads every shard to the longest with repeated indices.
        assert list(ours) == list(padded)[: len(ours)]
        assert len(padded) == math.ceil(11 / world_size)


def test_shuffled_shards_change_with_the_epoch_and_agree_across_ranks():
    samplers = [ShardSampler(40, r, 2, shuffle=True, seed=1) for r in range(2)]
    first = [list(s) for s in samplers]
    for sampler in samplers:
        sampler.set_epoch(1)
    second = [list(s) for s in samplers]
    assert first != second
    assert sorted(second[0] + second[1]) == list(range(40))
    with pytest.raises(ValueError, match="rank 2"):
        ShardSampler(10, 2, 2)


def test_one_process_runs_in_place_without_a_process_group(no_spawn):
    seen = []

    def record(context, tag):
        seen.append((context, tag, dist.is_initialized()))

    distributed.launch(record, "x", nproc=1, backend="gloo")
    assert seen == [(ONE_PROCESS, "x", False)]
    assert seen[0][0].is_main and not seen[0][0].is_distributed


def test_torchrun_environment_joins_the_group_and_tears_it_down(monkeypatch, no_spawn):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", str(distributed.free_port()))
    seen = []
    distributed.launch(lambda context: seen.append((context, dist.get_world_size())), backend="gloo")
    assert seen == [(DistributedContext(0, 1, 0, torch.device("cpu"), "gloo"), 1)]
    assert not dist.is_initialized()
    with pytest.raises(DistributedSetupError, match="--nproc_per_node"):
        distributed.launch(lambda context: None, nproc=2, backend="gloo")
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(DistributedSetupError, match="lacks MASTER_PORT"):
        distributed.init_from_environment("gloo")


def test_a_port_in_use_is_named_before_anything_is_spawned(no_spawn):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(DistributedSetupError, match=rf"--master_port {port} is already in use") as error:
            distributed.launch(lambda context: None, nproc=2, backend="gloo", master_port=port)
    suggested = int(str(error.value).rsplit("--master_port=", 1)[1])
    assert suggested != port
    with pytest.raises(DistributedSetupError, match="not a TCP port"):
        distributed.check_port_free(70000)


def test_nccl_without_cuda_is_refused(monkeypatch, no_spawn):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DistributedSetupError, match="'nccl' needs CUDA.*'gloo'"):
        distributed.launch(lambda context: None, nproc=2, backend="nccl")
    with pytest.raises(DistributedSetupError, match="unknown backend 'mpi'"):
        distributed.plan_launch(2, "mpi")
    assert distributed.plan_launch(None, None) == (1, "gloo")
    assert distributed.plan_launch(3, None) == (3, "gloo")
    with pytest.raises(DistributedSetupError, match=">= 1"):
        distributed.plan_launch(0, "gloo")


def test_one_process_per_visible_gpu_and_no_more(monkeypatch, no_spawn):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert distributed.plan_launch(None, None) == (2, "nccl")
    assert distributed.plan_launch(1, None) == (1, "nccl")
    assert distributed.plan_launch(4, "gloo") == (4, "gloo")  # CPU processes need no GPU
    too_many = r"3 NCCL processes.*3 GPUs needed but only 2 visible \(CUDA_VISIBLE_DEVICES=0,1\)"
    with pytest.raises(DistributedSetupError, match=too_many):
        distributed.launch(lambda context: None, nproc=3)
    third_process = {"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "2"}
    for name, value in dict(third_process, MASTER_ADDR="localhost", MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributedSetupError, match="LOCAL_RANK 2 .*3 GPUs needed but only 2 visible"):
        distributed.launch(lambda context: None)


def test_process_seeds_differ_by_rank_and_rank_zero_keeps_the_run_seed():
    contexts = [DistributedContext(r, 4, r, torch.device("cpu"), "gloo") for r in range(4)]
    seeds = [distributed.process_seed(42, context) for context in contexts]
    assert seeds[0] == 42 and len(set(seeds)) == 4


@pytest.mark.slow  # trains end to end in subprocesses: make test-all
def test_main_trains_in_two_processes_and_its_weights_evaluate_alike_in_one(tmp_path):
    """``main.py --nproc=2``: one results.json, every user evaluated once; the saved
    weights give the same test metrics in one process; resuming its checkpoint in one
    process is refused, since each rank's batch order would not continue."""
    from test_train import NUM_ITEMS as NUM_CYCLE_ITEMS
    from test_train import cyclic_dataset, run_main, tiny_config

    from generative_recommenders.data.sequence_format import load_sequence_dataset
    from generative_recommenders.trainer.protocol import protocol_views
    from generative_recommenders.trainer.train import create_data_loader

    cyclic_dataset(tmp_path / "data")
    config = tiny_config(tmp_path, "HSTU")
    port = distributed.free_port()
    proc = run_main(config, flags=["--nproc=2", "--backend=gloo", f"--master_port={port}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("eval @ epoch 1 [valid, 320 users]") == 1  # rank 0 alone reports
    run_dir = tmp_path / "exps" / "cyclic" / "hstu-tiny-s42"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2
    assert [e["users"] for e in results["evaluations"] if e["split"] == "test_last"] == [320]
    assert results["last"]["hr@10"] > 0.6  # it learned the cycle

    gin.clear_config()
    gin.parse_config_file(str(config))
    try:
        model = build_model("HSTU", ModelInputs(num_items=NUM_CYCLE_ITEMS, embedding_dim=16, num_positions=21,
                                               dropout_rate=0.0))
    finally:
        gin.clear_config()
    model.load_state_dict(torch.load(run_dir / "last_model.pt", weights_only=True))
    test_view = protocol_views(load_sequence_dataset(tmp_path / "data" / "cyclic"), 10, "validated").test
    single = evaluate_ranking(model, create_data_loader(test_view, 128), torch.device("cpu")).means()
    assert single == pytest.approx(results["last"], rel=1e-9, abs=1e-12)

    proc = run_main(config, "train_fn.num_epochs = 3", flags=["--resume"])  # extending it, in one process
    assert proc.returncode != 0
    assert "written by 2 process(es), and this run has 1" in proc.stderr
