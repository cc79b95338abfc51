"""Browser sessions: what a signed-in session holds (`model`) and where it is stored (`store`, `redis`).

Two stores sit behind one seam (`store.SessionStore`): the sealed cookie itself, or Redis. The Redis
store's module is imported only by a process configured for it: the redis package costs each worker
some 6 MB that a cookie-store deployment has no use for. Sealing is pure and lives in `core.seal`.
"""
