"""Unit tests for the `zizq` click group and `zizq serve` flag handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import zizq
from zizq.cli import main
from zizq.cli import serve as serve_module
from zizq.config import DEFAULT_BACKOFF, BackoffPolicy, ServeConfig

SERVE_FLAGS = [
    "--root-dir",
    "--license-key",
    "--host",
    "--port",
    "--admin-host",
    "--admin-port",
    "--no-admin",
    "--log-format",
    "--log-level",
    "--log-to-disk",
    "--log-dir",
    "--log-rotation",
    "--log-max-size",
    "--log-max-files",
    "--heartbeat-interval",
    "--idle-timeout",
    "--global-in-flight-limit",
    "--default-retry-limit",
    "--default-backoff-base",
    "--default-backoff-exponent",
    "--default-backoff-jitter",
    "--default-completed-job-retention",
    "--default-dead-job-retention",
    "--reaper-check-interval",
    "--default-commit-mode",
    "--enqueue-commit-mode",
    "--cache-size",
    "--jq-time-limit",
    "--jq-memory-limit",
    "--auto-compact-threshold",
]

BACKOFF_ENV = {
    "ZIZQ_DEFAULT_BACKOFF_BASE": "3s",
    "ZIZQ_DEFAULT_BACKOFF_EXPONENT": "3.75",
    "ZIZQ_DEFAULT_BACKOFF_JITTER": "15s",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ambient ZIZQ_* variables from a developer's shell must not change test outcomes.
    for name in list(os.environ):
        if name.startswith("ZIZQ_"):
            monkeypatch.delenv(name)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[ServeConfig]:
    """Replace the server with a stub that records the config it was started with."""
    configs: list[ServeConfig] = []

    def fake_run(config: ServeConfig) -> int:
        configs.append(config)
        return 0

    monkeypatch.setattr(serve_module, "_run", fake_run)
    return configs


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=env, prog_name="zizq")


def run_ok(
    args: list[str], captured: list[ServeConfig], env: dict[str, str] | None = None
) -> ServeConfig:
    result = invoke(args, env)
    assert result.exit_code == 0, result.output
    assert len(captured) == 1
    return captured[0]


def flat(text: str) -> str:
    """Help output with wrapping undone (click only wraps at whitespace)."""
    return " ".join(text.split())


# --- group -----------------------------------------------------------------------------


def test_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.output == f"zizq {zizq.__version__}\n"


def test_short_version_flag() -> None:
    # Reference: src/main.rs (clap `version` gives -V, --version).
    result = invoke(["-V"])
    assert result.exit_code == 0
    assert result.output == f"zizq {zizq.__version__}\n"


def test_group_help_lists_serve_and_globals() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    text = flat(result.output)
    for command in ("serve", "backup", "restore", "compact"):
        assert command in text
    assert "ZIZQ_ROOT_DIR" in text and "ZIZQ_LICENSE_KEY" in text
    assert "-k, --license-key" in text and "-V, --version" in text
    assert "zizq --port 0" in text  # says serve's flags work without naming it


def test_serve_help_lists_every_flag_and_env_var() -> None:
    result = invoke(["serve", "--help"])
    assert result.exit_code == 0
    text = flat(result.output)
    for flag in SERVE_FLAGS:
        assert flag in text
        assert serve_module.envvar_for(flag) in text, flag


def test_envvar_names_are_exact() -> None:
    assert serve_module.envvar_for("--default-backoff-base") == "ZIZQ_DEFAULT_BACKOFF_BASE"
    assert serve_module.envvar_for("--no-admin") == "ZIZQ_NO_ADMIN"


# --- serve is the default command ------------------------------------------------------
# Reference: src/main.rs `Command` is optional and `None` runs `serve::run`; the docs
# (docs/cli/src/serve.md) show serve's flags. Ours also routes them without `serve`.


@pytest.mark.parametrize(
    ("args", "root_dir", "port", "host"),
    [
        (["--port", "0"], "./zizq-root", 0, "127.0.0.1"),
        (["--port=0"], "./zizq-root", 0, "127.0.0.1"),
        (["--root-dir", "x", "--host", "0.0.0.0", "--port", "0"], "x", 0, "0.0.0.0"),
        (["--root-dir=x", "--port", "5"], "x", 5, "127.0.0.1"),
        (["--host", "::1", "--root-dir", "x"], "x", 7890, "::1"),
        (["-k", "tok", "--port", "9"], "./zizq-root", 9, "127.0.0.1"),
        (["-ktok", "--port", "9"], "./zizq-root", 9, "127.0.0.1"),
        (["--license-key", "tok", "--no-admin"], "./zizq-root", 7890, "127.0.0.1"),
        (["serve", "--port", "0"], "./zizq-root", 0, "127.0.0.1"),
    ],
)
def test_serve_flags_work_without_naming_serve(
    captured: list[ServeConfig], args: list[str], root_dir: str, port: int, host: str
) -> None:
    config = run_ok(args, captured)
    assert (config.root_dir, config.port, config.host) == (Path(root_dir), port, host)


def test_license_key_before_implicit_serve(captured: list[ServeConfig]) -> None:
    config = run_ok(["-k", "tok", "--no-admin"], captured)
    assert config.license_key == "tok" and config.admin_enabled is False


def test_implicit_serve_flag_errors_name_the_flag(captured: list[ServeConfig]) -> None:
    assert_usage_error(invoke(["--port", "x"]), "--port")
    assert_usage_error(invoke(["--root-dir", "x", "--bogus"]), "--bogus")
    assert captured == []


def test_unknown_command_is_still_an_error(captured: list[ServeConfig]) -> None:
    result = invoke(["frobnicate"])
    assert result.exit_code == 2 and "No such command 'frobnicate'" in result.output
    assert captured == []


def test_help_after_serve_flags_is_serve_help() -> None:
    result = invoke(["--port", "0", "--help"])
    assert result.exit_code == 0
    assert "Usage: zizq serve" in result.output and "--heartbeat-interval" in result.output


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--root-dir", "x", "--help"]])
def test_group_help_stays_the_group_help(args: list[str]) -> None:
    result = invoke(args)
    assert result.exit_code == 0
    assert "Usage: zizq [OPTIONS] [COMMAND]" in result.output
    assert "backup" in result.output


def test_short_flags(captured: list[ServeConfig]) -> None:
    # Reference: src/main.rs (-k, --license-key), src/commands/serve/mod.rs:124 (-l).
    config = run_ok(["serve", "-k", "tok", "-l", "5"], captured)
    assert config.license_key == "tok" and config.global_in_flight_limit == 5
    captured.clear()
    assert run_ok(["-l", "0"], captured).global_in_flight_limit == 0


# --- defaults and values ---------------------------------------------------------------


def test_bare_zizq_runs_serve_with_defaults(captured: list[ServeConfig]) -> None:
    config = run_ok([], captured)
    assert config == ServeConfig(root_dir=Path("./zizq-root"))


def test_serve_defaults_match_serve_config(captured: list[ServeConfig]) -> None:
    config = run_ok(["serve"], captured)
    assert config == ServeConfig(root_dir=Path("./zizq-root"))
    assert config.default_backoff == DEFAULT_BACKOFF
    assert config.enqueue_commit_mode == "buffered"


def test_flags_are_parsed(captured: list[ServeConfig], tmp_path: Path) -> None:
    config = run_ok(
        [
            "serve",
            "--host", "0.0.0.0",
            "--port", "0",
            "--admin-port", "9000",
            "--no-admin",
            "--log-format", "json",
            "--log-level", "DEBUG",
            "--log-dir", str(tmp_path / "logs"),
            "--log-rotation", "hourly",
            "--log-max-size", "200MB",
            "--log-max-files", "20",
            "--heartbeat-interval", "500ms",
            "--global-in-flight-limit", "0",
            "--default-retry-limit", "40",
            "--default-backoff-base", "3s",
            "--default-backoff-exponent", "3.75",
            "--default-backoff-jitter", "15s",
            "--default-completed-job-retention", "14d",
            "--default-dead-job-retention", "292000000y",
            "--reaper-check-interval", "1m",
            "--default-commit-mode", "fsync",
            "--cache-size", "1GiB",
        ],
        captured,
    )  # fmt: skip
    assert (config.host, config.port, config.admin_port) == ("0.0.0.0", 0, 9000)
    assert config.admin_enabled is False
    assert (config.log_format, config.log_level) == ("json", "debug")
    assert config.log_dir == tmp_path / "logs"
    assert (config.log_rotation, config.log_max_size, config.log_max_files) == (
        "hourly",
        200_000_000,
        20,
    )
    assert config.heartbeat_interval_ms == 500
    assert config.global_in_flight_limit == 0
    assert config.default_retry_limit == 40
    assert config.default_backoff == BackoffPolicy(3000, 3.75, 15_000)
    assert config.default_completed_retention_ms == 14 * 86_400_000
    assert config.default_dead_retention_ms == 292_000_000 * 31_557_600_000
    assert config.reaper_check_interval_ms == 60_000
    # The enqueue mode follows the default mode unless given itself.
    assert (config.default_commit_mode, config.enqueue_commit_mode) == ("fsync", "fsync")
    assert config.cache_size == 1024**3


@pytest.mark.parametrize(
    ("args", "env", "log_dir"),
    [
        ([], {}, None),
        (["--log-to-disk"], {}, Path("./zizq-root/log")),
        (["--root-dir", "r", "--log-to-disk"], {}, Path("r/log")),
        (["--root-dir", "r", "serve", "--log-to-disk"], {}, Path("r/log")),
        (["--log-to-disk", "--log-dir", "elsewhere"], {}, Path("elsewhere")),
        (["--log-dir", "elsewhere"], {}, Path("elsewhere")),
        ([], {"ZIZQ_LOG_TO_DISK": "true", "ZIZQ_ROOT_DIR": "e"}, Path("e/log")),
        ([], {"ZIZQ_LOG_TO_DISK": "false"}, None),
    ],
)
def test_log_to_disk_means_root_dir_log(
    captured: list[ServeConfig], args: list[str], env: dict[str, str], log_dir: Path | None
) -> None:
    # Reference: src/commands/serve/mod.rs:80-86 and `init_logging` (log_dir wins).
    assert run_ok(args, captured, env).log_dir == log_dir


@pytest.mark.parametrize("fmt", ["pretty", "compact", "json"])
def test_log_formats(captured: list[ServeConfig], fmt: str) -> None:
    assert run_ok(["--log-format", fmt], captured).log_format == fmt


def test_log_format_default_is_chosen_at_start(captured: list[ServeConfig]) -> None:
    assert run_ok([], captured).log_format is None  # pretty on a terminal, else compact


def test_auto_compact_threshold(captured: list[ServeConfig]) -> None:
    assert run_ok([], captured).auto_compact_threshold == 10_000
    captured.clear()
    assert run_ok([], captured, {"ZIZQ_AUTO_COMPACT_THRESHOLD": "0"}).auto_compact_threshold == 0
    captured.clear()
    assert run_ok(["--auto-compact-threshold", "5"], captured).auto_compact_threshold == 5


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--heartbeat-interval", "1m 30s", 90_000),
        ("--heartbeat-interval", "1m30s", 90_000),
        ("--reaper-check-interval", "2min", 120_000),
        ("--idle-timeout", "12.5s", 12_500),
        ("--idle-timeout", "1h 30m", 5_400_000),
        ("--default-completed-job-retention", "3w", 21 * 86_400_000),
        ("--default-dead-job-retention", "90d", 90 * 86_400_000),
        ("--default-dead-job-retention", "1500", 1500),
        ("--default-dead-job-retention", "2 months", 2 * 2_630_016_000),
        ("--jq-time-limit", "500ms", 500),
    ],
)
def test_humantime_durations_on_flags(
    captured: list[ServeConfig], flag: str, value: str, expected: int
) -> None:
    # A long heartbeat needs a longer idle timeout (checked together).
    config = run_ok(
        ["serve", flag, value, "--idle-timeout", "1h 30m"]
        if "heartbeat" in flag
        else ["serve", flag, value],
        captured,
    )
    fields = {
        "--heartbeat-interval": "heartbeat_interval_ms",
        "--reaper-check-interval": "reaper_check_interval_ms",
        "--idle-timeout": "idle_timeout_ms",
        "--default-completed-job-retention": "default_completed_retention_ms",
        "--default-dead-job-retention": "default_dead_retention_ms",
        "--jq-time-limit": "jq_time_limit_ms",
    }
    assert getattr(config, fields[flag]) == expected


def test_enqueue_commit_mode_overrides(captured: list[ServeConfig]) -> None:
    config = run_ok(["serve", "--enqueue-commit-mode", "fsync"], captured)
    assert (config.default_commit_mode, config.enqueue_commit_mode) == ("buffered", "fsync")


def test_env_vars_apply(captured: list[ServeConfig]) -> None:
    env = {
        "ZIZQ_PORT": "0",
        "ZIZQ_NO_ADMIN": "true",
        "ZIZQ_LOG_FORMAT": "json",
        "ZIZQ_CACHE_SIZE": "512MB",
        "ZIZQ_DEFAULT_DEAD_JOB_RETENTION": "3w",
        **BACKOFF_ENV,
    }
    config = run_ok(["serve"], captured, env)
    assert config.port == 0
    assert config.admin_enabled is False
    assert config.log_format == "json"
    assert config.cache_size == 512_000_000
    assert config.default_dead_retention_ms == 21 * 86_400_000
    assert config.default_backoff == BackoffPolicy(3000, 3.75, 15_000)


def test_env_vars_apply_to_bare_zizq(captured: list[ServeConfig]) -> None:
    config = run_ok([], captured, {"ZIZQ_PORT": "0", "ZIZQ_ROOT_DIR": "/tmp/zr"})
    assert config.port == 0
    assert config.root_dir == Path("/tmp/zr")


def test_flag_beats_env_var(captured: list[ServeConfig]) -> None:
    config = run_ok(["serve", "--port", "1234"], captured, {"ZIZQ_PORT": "0"})
    assert config.port == 1234


@pytest.mark.parametrize(
    ("args", "env", "root_dir"),
    [
        (["--root-dir", "g", "serve"], {}, "g"),
        (["serve", "--root-dir", "s"], {}, "s"),
        (["--root-dir", "g", "serve", "--root-dir", "s"], {}, "s"),
        (["--root-dir", "g"], {}, "g"),
        (["serve"], {"ZIZQ_ROOT_DIR": "e"}, "e"),
        (["--root-dir", "g", "serve"], {"ZIZQ_ROOT_DIR": "e"}, "g"),
    ],
)
def test_root_dir_in_either_position(
    captured: list[ServeConfig], args: list[str], env: dict[str, str], root_dir: str
) -> None:
    assert run_ok(args, captured, env).root_dir == Path(root_dir)


def test_license_key_in_either_position(captured: list[ServeConfig]) -> None:
    assert run_ok(["--license-key", "@/k.jwt", "serve"], captured).license_key == "@/k.jwt"
    captured.clear()
    assert run_ok(["serve", "--license-key", "tok"], captured).license_key == "tok"
    captured.clear()
    assert run_ok([], captured, {"ZIZQ_LICENSE_KEY": "envtok"}).license_key == "envtok"


def test_serve_exit_status_comes_from_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_module, "_run", lambda config: 3)
    assert invoke(["serve"]).exit_code == 3


# --- validation ------------------------------------------------------------------------


def assert_usage_error(result: Result, flag: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert flag in errors[0]


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["--default-backoff-base", "3s"], "--default-backoff-exponent, --default-backoff-jitter"),
        (
            ["--default-backoff-base", "3s", "--default-backoff-exponent", "2"],
            "--default-backoff-jitter",
        ),
        (["--default-backoff-jitter", "1s"], "--default-backoff-base, --default-backoff-exponent"),
    ],
)
def test_backoff_flags_all_or_nothing(
    captured: list[ServeConfig], args: list[str], missing: str
) -> None:
    result = invoke(["serve", *args])
    assert_usage_error(result, f"missing {missing}")
    assert captured == []


def test_backoff_env_vars_count_as_given(captured: list[ServeConfig]) -> None:
    result = invoke(
        ["serve", "--default-backoff-base", "3s"], {"ZIZQ_DEFAULT_BACKOFF_EXPONENT": "2"}
    )
    assert_usage_error(result, "--default-backoff-jitter")
    # The exponent came from its env var, so it is not reported missing.
    assert result.output.rstrip().endswith("missing --default-backoff-jitter")


def test_backoff_error_also_for_bare_zizq(captured: list[ServeConfig]) -> None:
    result = invoke([], {"ZIZQ_DEFAULT_BACKOFF_BASE": "3s"})
    assert_usage_error(result, "--default-backoff-exponent")


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--heartbeat-interval", "soon"], "--heartbeat-interval"),
        (["--default-dead-job-retention", "-1d"], "--default-dead-job-retention"),
        (["--heartbeat-interval", "0"], "--heartbeat-interval"),
        (["--reaper-check-interval", "0s"], "--reaper-check-interval"),
        (["--license-key-check-interval", "often"], "--license-key-check-interval"),
        (["--license-key-check-interval", "30d"], "--license-key-check-interval"),
        (["--cache-size", "lots"], "--cache-size"),
        (["--log-format", "xml"], "--log-format"),
        (["--log-level", "loud"], "--log-level"),
        (["--log-rotation", "weekly"], "--log-rotation"),
        (["--port", "65536"], "--port"),
        (["--admin-port", "-1"], "--admin-port"),
        (["--global-in-flight-limit", "-1"], "--global-in-flight-limit"),
        (["--default-retry-limit", "-1"], "--default-retry-limit"),
        (["--max-budgets", "0"], "--max-budgets"),
        (["--max-budgets", "many"], "--max-budgets"),
        (["--enqueue-batch-size", "0"], "--enqueue-batch-size"),
        (["--complete-batch-size", "-3"], "--complete-batch-size"),
        (["--log-max-files", "0"], "--log-max-files"),
        (["--default-commit-mode", "sometimes"], "--default-commit-mode"),
        (
            [
                "--default-backoff-base", "1s",
                "--default-backoff-exponent", "-1",
                "--default-backoff-jitter", "1s",
            ],
            "--default-backoff-exponent",
        ),
    ],
)  # fmt: skip
def test_bad_values_exit_2_naming_the_flag(
    captured: list[ServeConfig], args: list[str], flag: str
) -> None:
    assert_usage_error(invoke(["serve", *args]), flag)
    assert captured == []


HUGE = "9" * 5000


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--port", HUGE], "--port"),
        (["--admin-port", HUGE], "--admin-port"),
        (["--global-in-flight-limit", HUGE], "--global-in-flight-limit"),
        (["--default-retry-limit", "2147483648"], "--default-retry-limit"),
        (["--max-budgets", HUGE], "--max-budgets"),
        (["--enqueue-batch-size", "2147483648"], "--enqueue-batch-size"),
        (["--log-max-files", HUGE], "--log-max-files"),
        (["--auto-compact-threshold", "-1"], "--auto-compact-threshold"),
        (["--auto-compact-threshold", HUGE], "--auto-compact-threshold"),
        (["--heartbeat-interval", HUGE], "--heartbeat-interval"),
        (["--heartbeat-interval", HUGE + "s"], "--heartbeat-interval"),
        (["--default-dead-job-retention", "292471209y"], "--default-dead-job-retention"),
        (["--jq-time-limit", "25d"], "--jq-time-limit"),
        (["--cache-size", HUGE], "--cache-size"),
        (["--cache-size", "8EiB"], "--cache-size"),
        (["--log-max-size", HUGE + "GB"], "--log-max-size"),
        (
            ["--default-backoff-base", "25d", "--default-backoff-exponent", "2",
             "--default-backoff-jitter", "1s"],
            "--default-backoff-base",
        ),
        (
            ["--default-backoff-base", "1s", "--default-backoff-exponent", "1e999",
             "--default-backoff-jitter", "1s"],
            "--default-backoff-exponent",
        ),
        (
            ["--default-backoff-base", "1s", "--default-backoff-exponent", "nan",
             "--default-backoff-jitter", "1s"],
            "--default-backoff-exponent",
        ),
        (
            ["--default-backoff-base", "1s", "--default-backoff-exponent", "101",
             "--default-backoff-jitter", "1s"],
            "--default-backoff-exponent",
        ),
    ],
)  # fmt: skip
def test_huge_values_are_one_short_line(
    captured: list[ServeConfig], args: list[str], flag: str
) -> None:
    result = invoke(["serve", *args])
    assert_usage_error(result, flag)
    assert len(result.output) < 400, result.output[:500]
    assert captured == []


def test_bad_env_var_value_names_the_flag(captured: list[ServeConfig]) -> None:
    result = invoke(["serve"], {"ZIZQ_LOG_FORMAT": "xml"})
    assert_usage_error(result, "--log-format")
    assert "ZIZQ_LOG_FORMAT" in result.output


# --- the pure mapping ------------------------------------------------------------------


def test_serve_config_from_params_via_make_context() -> None:
    ctx = serve_module.serve.make_context(
        "serve", ["--port", "0", "--enqueue-commit-mode", "fsync"]
    )
    config = serve_module.serve_config_from_params(**ctx.params)
    assert config.port == 0
    assert config.enqueue_commit_mode == "fsync"
    assert config.root_dir == Path("zizq-root")
