"""The state store: storages, their scans, one record per file, with SQLAlchemy.

A SQLite file by default; PostgreSQL when many workers share it. The per-file records let a
re-scan reuse every dalle whose size, modification time and ETag did not change, and keep the last
good result of a storage that cannot be reached.

- `schema`: the tables; `engine`: creating and migrating the store;
- `catalog`: storages and the livrables published on them;
- `records`: each storage's records, and what a scan of the service read so far;
- `scans`: the state machine of a scan, every transition written once;
- `queries`: what the commands and the service's stages read.
"""
