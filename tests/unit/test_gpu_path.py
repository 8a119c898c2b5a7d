"""Pieces of the GPU path that run on CPU: the training workers' loss reduction, the sampling requests a vLLM
engine gets on GPU and on CPU, the DeepSpeed config of the memory options, and the model as training loads it."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.backends import SamplingSettings
from workers.backends.vllm import request_sampling
from workers.settings import TrainSettings
from workers.train import deepspeed_config, load_for_training, mean_across_ranks


def _reduce_on_rank(rank: int, init_file: str, out) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        loss = torch.tensor(1.0 + 2.0 * rank, dtype=torch.bfloat16)  # a bf16 loss, as the engine gives it
        out.put((rank, mean_across_ranks(loss, dist), loss.device.type))
    finally:
        dist.destroy_process_group()


def test_mean_across_ranks_reduces_the_tensor_where_it_lives(tmp_path):
    """Two real ranks: each gets the mean of both losses. The reduction takes the engine's tensor as it is (on
    GPUs: a CUDA tensor under NCCL, which has no CPU path) instead of copying it to a new CPU tensor."""
    context = mp.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_reduce_on_rank, args=(r, str(tmp_path / "init"), out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == [(0, 2.0, "cpu"), (1, 2.0, "cpu")]
    assert mean_across_ranks(torch.tensor(0.5), dist) == 0.5  # no process group: the value itself


def test_gpu_sampling_requests_carry_no_seed_cpu_requests_do():
    """A seeded request puts vLLM's GPU sampler in its per-request loop and off FlashInfer; on CPU the seed
    keeps records independent of batching."""
    settings = SamplingSettings(k=5, temperature=0.8, top_p=0.95, max_new_tokens=512, stop="\nDone.", seed=3)
    gpu, cpu = request_sampling(settings, 100, on_gpu=True), request_sampling(settings, 100, on_gpu=False)
    assert gpu["seed"] is None and cpu["seed"] == 3
    assert {k: v for k, v in gpu.items() if k != "seed"} == {k: v for k, v in cpu.items() if k != "seed"} == dict(
        n=5, temperature=0.8, top_p=0.95, max_tokens=100, stop=["\nDone."])


def test_memory_options_reach_deepspeeds_config():
    settings = TrainSettings(zero_stage=3, precision="bf16", offload_optimizer="cpu", offload_param="cpu",
                             micro_batch_size=4, global_batch_size=64)
    zero = deepspeed_config(settings, world_size=8)["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    plain = deepspeed_config(TrainSettings(zero_stage=2), world_size=1)["zero_optimization"]
    assert plain == {"stage": 2}


def test_the_model_loads_in_the_training_precision_with_checkpointing(tiny_model_dir):
    """bf16 weights load as bf16 (an 8B model: 16 GB per worker, not 32), and gradient checkpointing is on."""
    s = TrainSettings(zero_stage=2, precision="bf16", gradient_checkpointing=True)
    model = load_for_training(str(tiny_model_dir), s, deepspeed_config(s, 1))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.is_gradient_checkpointing and not model.config.use_cache
    fp32 = load_for_training(str(tiny_model_dir), TrainSettings(), deepspeed_config(TrainSettings(), 1))
    assert {p.dtype for p in fp32.parameters()} == {torch.float32} and not fp32.is_gradient_checkpointing


def _load_partitioned(rank: int, init_file: str, model_dir: str, out) -> None:
    import os

    # what Ray Train gives each worker (DeepSpeed reads LOCAL_RANK); CPU: this machine has no GPU
    os.environ.update(DS_ACCELERATOR="cpu", LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        import deepspeed

        deepspeed.init_distributed()  # as the train loop does: adopt the process group Ray Train opened
        s = TrainSettings(zero_stage=3, precision="bf16", zero_init=True, micro_batch_size=4, global_batch_size=8)
        model = load_for_training(model_dir, s, deepspeed_config(s, 2))
        params = list(model.parameters())
        out.put((rank, all(hasattr(p, "ds_id") for p in params), sum(p.numel() for p in params),
                 sum(p.ds_numel for p in params), {str(p.dtype) for p in params}))
    except Exception as exc:  # the test reads the cause instead of waiting for a result that never comes
        out.put((rank, f"{type(exc).__name__}: {exc}", -1, -1, set()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes import DeepSpeed: ~45 s
def test_zero3_builds_the_model_partitioned(tiny_model_dir, tmp_path):
    """With zero_init under ZeRO-3 no rank ever holds the whole model: every parameter is a DeepSpeed partition
    (its local tensor empty until gathered), bf16, and the full sizes add up to the checkpoint's."""
    from safetensors import safe_open

    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        full = sum(f.get_tensor(k).numel() for k in f.keys())
    context = mp.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_load_partitioned, args=(r, str(tmp_path / "init"), str(tiny_model_dir), out))
             for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, partitioned, local_numel, ds_numel, dtypes in results:
        assert partitioned and local_numel == 0 and dtypes == {"torch.bfloat16"}, (rank, local_numel)
        assert ds_numel == full
