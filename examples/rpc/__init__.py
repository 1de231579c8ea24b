"""ONC RPC examples: demo.x and the servekit server of it (demo.py)."""
