#!/usr/bin/env python3
"""Lists the services of a Picket control plane through server reflection,
as the standard Python tooling does: grpcio-reflection's descriptor
database, which speaks grpc.reflection.v1alpha. Prints one service name a
line, then the methods of picket.v1.AdminService as `method NAME`.

Usage: reflection_v1alpha.py HOST:PORT CA_PEM [CERT_PEM KEY_PEM]
Without a client certificate the call is expected to fail: it prints
`error CODE` and exits 3.
"""
import sys

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from google.protobuf.descriptor_pool import DescriptorPool


def main() -> int:
    addr, ca = sys.argv[1:3]
    read = lambda p: open(p, "rb").read()
    if len(sys.argv) >= 5:
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(ca),
            private_key=read(sys.argv[4]),
            certificate_chain=read(sys.argv[3]),
        )
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=read(ca))
    # The server's certificate names localhost and 127.0.0.1.
    with grpc.secure_channel(addr, creds) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        try:
            services = db.get_services()
        except grpc.RpcError as e:
            print("error", e.code().name)
            return 3
        for s in services:
            print(s)
        pool = DescriptorPool(db)
        admin = pool.FindServiceByName("picket.v1.AdminService")
        for m in admin.methods:
            print("method", m.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
