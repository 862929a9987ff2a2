#!/usr/bin/python3
"""pipe_peer.py — the peer for the stream benchmark: view pairs as PyTorch tensors through a pipe.

What a Python pipeline does without shared memory: a producer process sends uint8 tensors of shape
(2, 224, 224, 3) through multiprocessing.Pipe (pickled), a consumer receives them. Prints
pairs_per_s=N. Run with Debian's /usr/bin/python3 (python3-torch)."""
import argparse
import multiprocessing as mp
import time

import torch


def produce(conn, pairs):
    torch.manual_seed(0)
    prepared = [torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8) for _ in range(16)]
    for i in range(pairs):
        conn.send((i, i % 1000, prepared[i % 16]))
    conn.send(None)
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5000)
    args = ap.parse_args()
    recv, send = mp.Pipe(duplex=False)
    p = mp.Process(target=produce, args=(send, args.pairs))
    t0 = time.perf_counter()
    p.start()
    n = 0
    while True:
        item = recv.recv()
        if item is None:
            break
        n += 1
    dt = time.perf_counter() - t0
    p.join()
    print(f"pairs_per_s={n / dt:.0f}")


if __name__ == "__main__":
    main()
