"""ONC RPC (RFC 5531) and XDR (RFC 4506): sans-IO codecs, servers and clients."""
