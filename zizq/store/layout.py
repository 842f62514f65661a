"""Names and key encodings of everything we keep in RocksDB.

Column families keep unrelated data apart so that a state change rewrites only
the small job record, never the payload, and so that scans of one kind of key
never wade through another.
"""

import functools

SCHEMA_VERSION = 1

# The default column family holds store metadata such as the schema version.
META_SCHEMA_VERSION = b"schema_version"

CF_JOBS = "jobs"  # job id -> msgpack job record (everything but the payload)
CF_PAYLOADS = "payloads"  # job id -> msgpack payload, written once at enqueue
CF_ERRORS = "errors"  # job id + attempt (u32 big-endian) -> msgpack error record
CF_INDEX = "index"  # secondary index keys (status, queue, type) + job id -> empty

COLUMN_FAMILIES = (CF_JOBS, CF_PAYLOADS, CF_ERRORS, CF_INDEX)

ID_LEN = 25  # SCRU128 string ids: fixed length, so an index key ends with exactly one id

# Secondary index dimensions. Keys are <tag><len u16><value utf-8><id>, so all
# ids of one value sit together in id (= enqueue) order and can be paged by seek.
INDEX_STATUS = b"s"
INDEX_QUEUE = b"q"
INDEX_TYPE = b"t"
# Keyed indexes of pro features: <tag><key utf-8> -> the id of the job holding the key.
# A unique key's holder (zizq.queue.unique) and a batch key's open job (zizq.queue.batching).
# They point at one job each and are checked against its record when read, never trusted.
INDEX_UNIQUE = b"u"
INDEX_BATCH = b"b"

# Cron groups and entries (pro) sit in the default column family under their own prefix,
# so a database from before cron needs no new column family (read-only opens list them):
#   CRON_GROUP + <group utf-8>                              -> msgpack group record
#   CRON_ENTRY + <len u16><group utf-8> + <entry utf-8>      -> msgpack entry record
CRON_PREFIX = b"cron:"
CRON_GROUP = b"cron:g:"
CRON_ENTRY = b"cron:e:"
CRON_END = b"cron;"  # just past every cron key (";" follows ":")

# Budget policies (pro) sit in the default column family too: BUDGET + <key utf-8> -> msgpack
# {allocation, strategy, duration_ms?, burst?, created_at, updated_at}. Token state is
# never stored (a restart refills every bucket); jobs carry their bindings in their record.
BUDGET_PREFIX = b"budget:"
BUDGET_END = b"budget;"  # just past every budget key

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


MAX_INDEX_VALUE_BYTES = 0xFFFF  # the length prefix is 2 bytes
_CACHED_VALUE_CHARS = 256  # at most 1 KiB of UTF-8: what a valid queue or type name can be


def index_prefix(tag: bytes, value: str) -> bytes:
    # Names of jobs are few and reused per job write, so their prefixes are
    # cached; only short values are, so the cache holds a few MiB at most
    # whatever values pass through (a filter, a record from an older version).
    if len(value) <= _CACHED_VALUE_CHARS:
        return _cached_prefix(tag, value)
    return _prefix(tag, value)


@functools.lru_cache(maxsize=4096)
def _cached_prefix(tag: bytes, value: str) -> bytes:
    return _prefix(tag, value)


def _prefix(tag: bytes, value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > MAX_INDEX_VALUE_BYTES:
        raise ValueError(f"index value of {len(raw)} bytes exceeds {MAX_INDEX_VALUE_BYTES}")
    return tag + len(raw).to_bytes(2, "big") + raw


def index_key(tag: bytes, value: str, job_id: str) -> bytes:
    return index_prefix(tag, value) + job_id.encode("ascii")


def keyed_index_key(tag: bytes, key: str) -> bytes:
    """The index key of a unique or batch key (no length prefix: nothing follows it)."""
    return tag + key.encode("utf-8", "surrogatepass")


def cron_group_key(group: str) -> bytes:
    return CRON_GROUP + group.encode("utf-8")


def cron_entry_prefix(group: str) -> bytes:
    """Every entry of one group: the length prefix keeps "a" apart from "ab"."""
    raw = group.encode("utf-8")
    return CRON_ENTRY + len(raw).to_bytes(2, "big") + raw


def cron_entry_key(group: str, entry: str) -> bytes:
    return cron_entry_prefix(group) + entry.encode("utf-8")


def budget_key(key: str) -> bytes:
    return BUDGET_PREFIX + key.encode("utf-8")


def cron_entry_names(key: bytes) -> tuple[str, str]:
    """(group, entry) of an entry key."""
    size = int.from_bytes(key[len(CRON_ENTRY) : len(CRON_ENTRY) + 2], "big")
    start = len(CRON_ENTRY) + 2
    return key[start : start + size].decode("utf-8"), key[start + size :].decode("utf-8")
