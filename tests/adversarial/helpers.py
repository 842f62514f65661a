"""Checks shared by the adversarial tests."""

from __future__ import annotations

import time

import httpx

STATUSES = ("scheduled", "ready", "in_flight", "completed", "dead")


def health_latency(base_url: str, timeout: float = 5.0) -> float:
    """Seconds one GET /health took on a fresh connection (raises if it did not answer 200)."""
    started = time.monotonic()
    response = httpx.get(f"{base_url}/health", timeout=timeout)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return elapsed


def scan_counts(base_url: str, timeout: float = 30.0) -> dict[str, int]:
    """Jobs per status as a full listing walk sees them (the store, not the counters)."""
    counts = dict.fromkeys(STATUSES, 0)
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        path = "/jobs?limit=2000"
        while path:
            page = client.get(path).json()
            for job in page["jobs"]:
                counts[job["status"]] += 1
            path = page["pages"]["next"]
    return counts


def counter_counts(base_url: str, timeout: float = 30.0) -> dict[str, int]:
    """Jobs per status as GET /jobs/count answers from the in-memory counters."""
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        return {
            status: client.get("/jobs/count", params={"status": status}).json()["count"]
            for status in STATUSES
        }


def assert_counters_match_scan(base_url: str) -> None:
    scanned = scan_counts(base_url)
    counted = counter_counts(base_url)
    assert counted == scanned, f"counters {counted} != scan {scanned}"
    assert all(n >= 0 for n in counted.values()), counted
