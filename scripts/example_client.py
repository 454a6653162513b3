#!/usr/bin/env python3
"""A streamed Generate call with the Python grpcio client (the README's walk-through).

  .venv/bin/python scripts/example_client.py --target 127.0.0.1:50051 \
      --prompt "Name three primary colours." --policy asl

Generates the asl.v1 stubs from proto/ into a temporary folder with grpc_tools, then prints each
streamed chunk and the final message (finish reason, usage, timings, pruning report).
"""
import argparse
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def stubs():
    import grpc_tools

    out = tempfile.mkdtemp(prefix="asl_stubs_")
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    proto = ROOT / "proto" / "asl" / "v1" / "generation.proto"
    if protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
                    f"--grpc_python_out={out}", str(proto)]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    from asl.v1 import generation_pb2, generation_pb2_grpc

    return generation_pb2, generation_pb2_grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--prompt", default="Name three primary colours.")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--policy", default="asl")
    a = ap.parse_args()
    pb, pb_grpc = stubs()
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(a.target))
    req = pb.GenerateRequest(
        request_id="readme-1",
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=a.prompt)]),
        sampling=pb.SamplingParams(max_tokens=a.max_tokens),
        pruning=pb.PruningParams(policy=a.policy, kv_budget=256, select_k=256),
    )
    for resp in stub.Generate(req, timeout=120):
        if resp.HasField("chunk"):
            print(f"chunk ids={list(resp.chunk.token_ids)} text={resp.chunk.text!r}")
        else:
            print("complete:")
            print(resp.complete)


if __name__ == "__main__":
    main()
