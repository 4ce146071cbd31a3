"""PyTorch gloo all_reduce between WORLD processes on loopback: `python3 gloo_allreduce.py WORLD SIZE_MB ITERATIONS`.
Prints rank 0's median and best time per all_reduce (after two warm-up rounds), like the C# ring benchmark."""
import os, sys, time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def member(rank, world, size_mb, iterations, port, results):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    vector = torch.full((int(size_mb * 1_000_000) // 4,), float(rank + 1), dtype=torch.float32)
    barrier = torch.zeros(1)
    times = []
    for i in range(iterations + 2):
        dist.all_reduce(barrier)
        start = time.perf_counter()
        dist.all_reduce(vector)
        if i >= 2:
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    if rank == 0:
        results.put((times[len(times) // 2], times[0]))
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    world, size_mb, iterations = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    processes = [ctx.Process(target=member, args=(r, world, size_mb, iterations, port, results)) for r in range(world)]
    for p in processes:
        p.start()
    median, best = results.get(timeout=600)
    for p in processes:
        p.join()
    print(f"gloo world={world} size_mb={size_mb:g} median_ms={median:.1f} best_ms={best:.1f}")
