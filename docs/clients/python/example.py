#!/usr/bin/env python3
"""omnifold from Python: read a profile, watch it change, redeem points.

The gRPC stubs are generated from the repository's proto/ files when this
runs (grpcio-tools), into a temporary directory: nothing generated is kept
in the repository, and the stubs always match the contract.

    python3 -m pip install grpcio grpcio-tools
    export OMNIFOLD_API_KEY=$(cat .omnifold/dev.key)      # make run made it
    python3 docs/clients/python/example.py --member m-000001 --points 100

It prints the profile's summary, redeems the points with a request id
(asking again while the verdict is IN_PROGRESS: the same id never spends
twice), and waits on WatchProfile until the change that spent them.
"""

import argparse
import atexit
import importlib
import os
import pathlib
import shutil
import sys
import tempfile
import uuid

import grpc
from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[3]


def generate_stubs(proto_root: pathlib.Path) -> pathlib.Path:
    """Generates Python modules for proto/omnifold/v1/*.proto; returns their directory."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="omnifold-stubs-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "omnifold" / "v1").glob("*.proto"))
    args = ["protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        sys.exit(f"generating the stubs from {proto_root} failed")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("OMNIFOLD_GRPC", "127.0.0.1:50051"))
    parser.add_argument("--member", default="m-000001")
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--proto", default=str(REPO / "proto"))
    args = parser.parse_args()

    sys.path.insert(0, str(generate_stubs(pathlib.Path(args.proto))))
    common = importlib.import_module("omnifold.v1.common_pb2")
    profile = importlib.import_module("omnifold.v1.profile_pb2")
    profile_grpc = importlib.import_module("omnifold.v1.profile_pb2_grpc")
    loyalty = importlib.import_module("omnifold.v1.loyalty_pb2")
    loyalty_grpc = importlib.import_module("omnifold.v1.loyalty_pb2_grpc")

    key = os.environ.get("OMNIFOLD_API_KEY", "")
    auth = [("authorization", f"Bearer {key}")] if key else []
    channel = grpc.insecure_channel(args.server)
    profiles = profile_grpc.ProfileServiceStub(channel)
    points = loyalty_grpc.LoyaltyServiceStub(channel)
    member = common.MemberRef(member_id=args.member)

    # 1. Read the profile.
    p = profiles.GetProfile(profile.GetProfileRequest(member=member), metadata=auth, timeout=10)
    print(f"profile {p.member_id}: tier {common.Tier.Name(p.loyalty.tier)}, "
          f"{p.loyalty.active_points} active points, {p.purchases.orders} orders")

    # 2. Watch it: the first message is the profile now, with its version.
    watch = profiles.WatchProfile(profile.WatchProfileRequest(member=member), metadata=auth, timeout=60)
    first = next(m for m in watch if m.WhichOneof("event") == "change")
    version = first.change.version
    print(f"watching from version {version.partition}:{version.next_offset}")

    # 3. Redeem, with a request id: asking again never spends twice.
    request_id = f"python-example-{uuid.uuid4()}"
    ask = loyalty.RedeemPointsRequest(member=member, request_id=request_id, points=args.points,
                                      channel=common.MOBILE_APP, reward="python-example")
    for _ in range(30):
        answer = points.RedeemPoints(ask, metadata=auth, timeout=10)
        if answer.status != loyalty.IN_PROGRESS:
            break
    print(f"redemption {request_id}: {loyalty.RedemptionStatus.Name(answer.status)} {answer.reason}".rstrip())
    if answer.status != loyalty.ACCEPTED:
        return 2

    # 4. The change that spent them arrives on the watch.
    for message in watch:
        if message.WhichOneof("event") != "change":
            continue
        change = message.change
        if change.profile.loyalty.active_points == first.change.profile.loyalty.active_points - args.points:
            v = change.version
            print(f"change at {v.partition}:{v.next_offset}: {change.profile.loyalty.active_points} active points")
            watch.cancel()
            return 0
    return 3


if __name__ == "__main__":
    sys.exit(main())
