#!/usr/bin/python3
"""pipe_peer.py — the peer for the stream benchmark: view pairs as PyTorch tensors through a pipe.

What a Python pipeline does to pass batches between processes over a pipe: a producer sends each
uint8 tensor of shape (2, 224, 224, 3) with its label and id through multiprocessing.Pipe
(send_bytes of the tensor's buffer plus a small pickled header), the consumer rebuilds the tensor
(torch.frombuffer). (Sending the tensor object itself makes torch pass a shared-memory handle per
tensor instead: not a pipe transfer.) Prints pairs_per_s=N. Run with /usr/bin/python3 (python3-torch)."""
import argparse
import multiprocessing as mp
import pickle
import time

import torch


def produce(conn, pairs):
    torch.manual_seed(0)
    prepared = [torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8) for _ in range(16)]
    for i in range(pairs):
        t = prepared[i % 16]
        conn.send_bytes(pickle.dumps((i, i % 1000, tuple(t.shape))))
        conn.send_bytes(t.numpy().tobytes())
    conn.send_bytes(b"")
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5000)
    args = ap.parse_args()
    recv, send = mp.Pipe(duplex=False)
    p = mp.Process(target=produce, args=(send, args.pairs))
    t0 = time.perf_counter()
    p.start()
    send.close()
    n = 0
    while True:
        head = recv.recv_bytes()
        if not head:
            break
        _sample, _label, shape = pickle.loads(head)
        views = torch.frombuffer(bytearray(recv.recv_bytes()), dtype=torch.uint8).reshape(shape)
        n += int(views.shape[0] == 2)
    dt = time.perf_counter() - t0
    p.join()
    print(f"pairs_per_s={n / dt:.0f}")


if __name__ == "__main__":
    main()
