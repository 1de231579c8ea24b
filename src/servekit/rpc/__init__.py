"""ONC RPC (RFC 5531) and XDR (RFC 4506): sans-IO codecs, servers and clients.

    from servekit import rpc
    from servekit.rpc import xdr

    class AddV1(rpc.Version, program=0x20000123, version=1):
        @rpc.procedure(1)
        def ADD(self, a: xdr.Int, b: xdr.Int) -> xdr.Int:
            return a + b

    servekit.make_server("tcp://127.0.0.1:0", rpc.Program(AddV1)).serve_forever()

    with rpc.Client("tcp://127.0.0.1:5000", AddV1) as client:
        client.call(AddV1.ADD, 2, 3)

``xdr`` (the types), ``message`` (calls and replies) and ``record`` (TCP record
marking) are sans-IO; ``program`` declares programs and answers calls; ``server``
has the handlers that carry them on each transport and engine; ``client`` calls.
"""

from servekit.rpc.client import (
    AsyncClient,
    AuthError,
    Client,
    GarbageArgs,
    ProcUnavail,
    ProgMismatch,
    ProgUnavail,
    RpcError,
    RpcMismatch,
    RpcTimeout,
    SystemErr,
)
from servekit.rpc.message import AuthNone, AuthSys, Call, Credential
from servekit.rpc.program import Procedure, Program, Version, procedure, unimplemented

__all__ = [
    "AsyncClient",
    "AuthError",
    "AuthNone",
    "AuthSys",
    "Call",
    "Client",
    "Credential",
    "GarbageArgs",
    "ProcUnavail",
    "Procedure",
    "ProgMismatch",
    "ProgUnavail",
    "Program",
    "RpcError",
    "RpcMismatch",
    "RpcTimeout",
    "SystemErr",
    "Version",
    "procedure",
    "unimplemented",
]
