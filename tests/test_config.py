"""Configuration: layering, validation and one-line errors."""

from pathlib import Path

import pytest

from harvester.config import DEFAULTS, build_config, load_toml
from harvester.errors import ConfigError
from harvester.storage import MiB

BASE = {"after": "2024-01-01", "before": "2024-01-03", "out": "/tmp/lake"}


def test_defaults_leave_api_defaults_alone() -> None:
    """Without --confidence/--severity nothing is sent, so the API's defaults apply."""
    config = build_config(BASE, env={})
    assert config.query.params() == {}
    assert config.feeds == (
        "ips",
        "domains",
        "urls",
        "artifacts",
        "paths",
        "network_streams",
        "registry_keys",
    )


def test_zero_confidence_is_sent_explicitly() -> None:
    """--confidence 0 is sent as 0 (a full archive), not dropped as falsy."""
    config = build_config({**BASE, "confidence": 0, "severity": "0"}, env={})
    assert config.query.params() == {"confidence": "0", "severity": "0"}


def test_query_fingerprint_tracks_what_selects_records() -> None:
    """Changing a filter changes the fingerprint; changing the page size does not."""
    a = build_config(BASE, env={})
    assert a.query.fingerprint == build_config({**BASE, "limit": 5}, env={}).query.fingerprint
    assert a.query.fingerprint != build_config({**BASE, "confidence": 0}, env={}).query.fingerprint


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"feeds": "ips,dns"}, "unknown feed 'dns'"),
        ({"limit": 0}, "--limit 0 must be at least 1"),
        ({"concurrency": -1}, "--concurrency -1 must be at least 1"),
        ({"rate": 0}, "--rate 0.0 must be greater than 0"),
        ({"rate": "fast"}, "--rate 'fast' is not a number"),
        ({"window": "5h"}, "does not divide a day"),
        ({"filter": ["domain"]}, "is not KEY=VALUE"),
        ({"filter": ["domain=x.com"]}, "not a restriction of feed ips; pass --feeds domains"),
        ({"confidence": 101}, "out of range"),
        ({"shard": "3/2"}, "shard 3/2 is invalid"),
        ({"shard": "a/b"}, "is not I/N"),
        ({"base_url": "ftp://x"}, "not an http"),
        ({"after": "2024-02-30"}, "not a valid date"),
        ({"s3_multipart_threshold": 1024}, "--s3-multipart-threshold 1024 is below S3's"),
        ({"s3_multipart_threshold": "64MiB"}, "--s3-multipart-threshold '64MiB' is not a whole"),
    ],
)
def test_bad_options_are_one_line_errors(over: dict[str, object], message: str) -> None:
    """Each bad option is refused with a message that names it."""
    with pytest.raises(ConfigError, match=message) as info:
        build_config({**BASE, **over}, env={})
    assert "\n" not in str(info.value)


def test_shards_read_the_job_index_and_split_the_rate() -> None:
    """--shards N takes its index from the batch engine and a 1/N share of the rate."""
    config = build_config({**BASE, "shards": 4, "rate": 20}, env={"JOB_COMPLETION_INDEX": "2"})
    assert (config.shard.index, config.shard.count, config.rate) == (2, 4, 5.0)
    config = build_config({**BASE, "shards": 3}, env={"AWS_BATCH_JOB_ARRAY_INDEX": "0"})
    assert config.shard.index == 0
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX"):
        build_config({**BASE, "shards": 3}, env={})


def test_toml_unknown_key_and_wrong_type(tmp_path: Path) -> None:
    """A config file with an unknown key or a wrong type is refused by name."""
    bad = tmp_path / "bad.toml"
    bad.write_text('after = "2024-01-01"\nconfidense = 0\n')
    with pytest.raises(ConfigError, match=r"unknown key.*confidense"):
        load_toml(str(bad))
    bad.write_text('limit = "many"\n')
    with pytest.raises(ConfigError, match="limit is str, expected int"):
        load_toml(str(bad))
    bad.write_text("org_only = 1\n")
    with pytest.raises(ConfigError, match="org_only is int, expected bool"):
        load_toml(str(bad))


def test_toml_native_dates_are_accepted(tmp_path: Path) -> None:
    """TOML date-times with offsets work as --after/--before."""
    good = tmp_path / "good.toml"
    good.write_text('after = 2024-01-01T00:00:00Z\nbefore = "2024-01-02"\nout = "x"\n')
    config = build_config(load_toml(str(good)), env={})
    assert config.after.isoformat() == "2024-01-01T00:00:00+00:00"


def test_shard_and_shards_must_agree() -> None:
    """--shard 1/3 with --shards 4 is refused rather than silently picking one."""
    with pytest.raises(ConfigError, match="disagree"):
        build_config({**BASE, "shard": "1/3", "shards": 4}, env={})


def test_s3_multipart_threshold_defaults_to_64_mib_and_accepts_5() -> None:
    """--s3-multipart-threshold: 64 MiB by default; 5 MiB, S3's smallest part, is allowed."""
    assert (
        build_config(BASE, env={}).s3_multipart_threshold
        == 64 * MiB
        == DEFAULTS["s3_multipart_threshold"]
    )
    config = build_config({**BASE, "s3_multipart_threshold": str(5 * MiB)}, env={})
    assert config.s3_multipart_threshold == 5 * MiB
