"""Names and key encodings of everything we keep in RocksDB.

Column families keep unrelated data apart so that a state change rewrites only
the small job record, never the payload, and so that scans of one kind of key
never wade through another.
"""

SCHEMA_VERSION = 1

# The default column family holds store metadata such as the schema version.
META_SCHEMA_VERSION = b"schema_version"

CF_JOBS = "jobs"  # job id -> msgpack job record (everything but the payload)
CF_PAYLOADS = "payloads"  # job id -> msgpack payload, written once at enqueue
CF_ERRORS = "errors"  # job id + attempt (u32 big-endian) -> msgpack error record

COLUMN_FAMILIES = (CF_JOBS, CF_PAYLOADS, CF_ERRORS)

DATA_DIR_NAME = "data"  # RocksDB lives in <root>/data; the root may hold other files


def job_key(job_id: str) -> bytes:
    return job_id.encode("ascii")


def error_key(job_id: str, attempt: int) -> bytes:
    # Big-endian attempts sort numerically, so a prefix scan lists errors in order.
    return job_id.encode("ascii") + attempt.to_bytes(4, "big")


def error_key_range(job_id: str) -> tuple[bytes, bytes]:
    """Half-open key range covering every error recorded for one job."""
    prefix = job_id.encode("ascii")
    return prefix + b"\x00\x00\x00\x00", prefix + b"\xff\xff\xff\xff\xff"
