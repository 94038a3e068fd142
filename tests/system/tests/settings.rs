//! Every binary refuses a bad setting the same way: exit code 2 and one
//! line on stderr that names the setting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;
use test_support::{TEST_SESSION_SECRET, binary_path, run_to_exit};

const BINARIES: [&str; 3] = ["bidder", "sse-edge", "ws-edge"];

/// Runs `binary` with `args` and only the environment in `env` (none of
/// the test runner's `AUCTION_*` variables), to completion.
fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary_path(binary));
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run the binary")
}

fn out_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn err_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_binary_exits_2_naming_the_bad_setting() {
    let cases: &[(&str, &str, &str)] = &[
        ("sse-edge", "AUCTION_REDIS_URL", "nonsense"),
        ("sse-edge", "AUCTION_LISTEN", ":99999"),
        ("sse-edge", "AUCTION_SSE_KEEPALIVE_MS", "often"),
        ("sse-edge", "AUCTION_MAX_CONNECTIONS", "0"),
        ("ws-edge", "AUCTION_REDIS_URL", "nonsense"),
        ("ws-edge", "AUCTION_WS_PING_MS", "-5"),
        ("ws-edge", "AUCTION_WS_MAX_MESSAGE", "huge"),
        ("ws-edge", "AUCTION_BIDDER_URL", "ftp://bidder"),
        ("bidder", "AUCTION_LOG_FORMAT", "xml"),
        ("bidder", "AUCTION_CONFIG", "/nonexistent.toml"),
        (
            "bidder",
            "AUCTION_CORS_ALLOWED_ORIGINS",
            "http://pages.example/path",
        ),
        (
            "bidder",
            "AUCTION_CORS_ALLOWED_ORIGINS",
            "*,http://pages.example",
        ),
        (
            "sse-edge",
            "AUCTION_BIDDER_PUBLIC_URL",
            "https://x; script-src *",
        ),
    ];
    for (binary, name, value) in cases {
        let (status, stderr) = run_to_exit(binary, &[(name, value)], Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{binary} {name}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{binary} {name}: one line, got {stderr:?}");
        assert!(
            lines[0].contains(name),
            "{binary}: {name} named in {stderr:?}"
        );
    }
}

#[test]
fn help_lists_every_setting_of_the_spec_and_exits_0() {
    for spec in service_kit::spec::ALL {
        let output = run(spec.binary, &["--help"], &[]);
        let help = out_text(&output);
        assert_eq!(output.status.code(), Some(0), "{}: {output:?}", spec.binary);
        for setting in spec.settings() {
            let line = help
                .lines()
                .find(|line| {
                    line.trim_start()
                        .starts_with(&format!("{} ", setting.env_name()))
                })
                .unwrap_or_else(|| panic!("{} --help lacks {}", spec.binary, setting.env_name()));
            if let Some(default) = setting.default.filter(|d| !d.is_empty()) {
                assert!(line.contains(default), "{}: {line}", spec.binary);
            }
        }
        // Every AUCTION_* name on --help is a setting of the project.
        for word in help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(key) = word.strip_prefix("AUCTION_")
                && !key.is_empty()
                && word != "AUCTION_CONFIG"
            {
                let key = key.to_ascii_lowercase();
                assert!(
                    service_kit::spec::ALL
                        .iter()
                        .any(|spec| spec.find(&key).is_some()),
                    "{}: {word}",
                    spec.binary
                );
            }
        }
    }
}

#[test]
fn version_prints_the_version_and_exits_0() {
    for binary in BINARIES {
        let output = run(binary, &["--version"], &[]);
        assert_eq!(output.status.code(), Some(0), "{binary}: {output:?}");
        assert!(
            out_text(&output).starts_with(&format!("{binary} {}", env!("CARGO_PKG_VERSION"))),
            "{binary}: {output:?}"
        );
    }
}

#[test]
fn an_unknown_argument_exits_2() {
    for binary in BINARIES {
        let output = run(binary, &["--verbose"], &[]);
        assert_eq!(output.status.code(), Some(2), "{binary}: {output:?}");
        assert!(err_text(&output).contains("--verbose"), "{output:?}");
    }
}

#[test]
fn a_misspelled_variable_stops_start_up_naming_it_and_the_setting_meant() {
    let cases = [
        ("bidder", "AUCTION_REDIS_ULR", "AUCTION_REDIS_URL"),
        (
            "sse-edge",
            "AUCTION_SSE_KEEPALIVE",
            "AUCTION_SSE_KEEPALIVE_MS",
        ),
        ("ws-edge", "AUCTION_WS_PING", "AUCTION_WS_PING_MS"),
    ];
    for (binary, misspelled, meant) in cases {
        let (status, stderr) = run_to_exit(
            binary,
            &[
                (misspelled, "1"),
                ("AUCTION_SESSION_SECRET", TEST_SESSION_SECRET),
            ],
            Duration::from_secs(10),
        );
        assert_eq!(status.code(), Some(2), "{binary} {misspelled}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{binary}: one line, got {stderr:?}");
        assert!(lines[0].contains(misspelled), "{stderr}");
        assert!(lines[0].contains(meant), "{stderr}");
    }
    // bidder token reads the same settings, and refuses alike.
    let output = run(
        "bidder",
        &["token", "--name", "Ops"],
        &[
            ("AUCTION_SESSION_SECRET", TEST_SESSION_SECRET),
            ("AUCTION_SESION_TTL_S", "60"),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        err_text(&output).contains("AUCTION_SESION_TTL_S"),
        "{output:?}"
    );
    assert!(
        err_text(&output).contains("AUCTION_SESSION_TTL_S"),
        "{output:?}"
    );
}

#[test]
fn a_misspelled_file_key_stops_start_up_naming_it_and_the_setting_meant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auction.toml");
    std::fs::write(&file, "sim_intervl_ms = 500\nlog_format = \"json\"\n").unwrap();
    let path = file.to_str().unwrap();
    for binary in BINARIES {
        // From AUCTION_CONFIG and from --config alike.
        let (status, stderr) = run_to_exit(
            binary,
            &[
                ("AUCTION_CONFIG", path),
                ("AUCTION_SESSION_SECRET", TEST_SESSION_SECRET),
            ],
            Duration::from_secs(10),
        );
        assert_eq!(status.code(), Some(2), "{binary}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{binary}: one line, got {stderr:?}"
        );
        assert!(stderr.contains("sim_intervl_ms"), "{stderr}");
        assert!(stderr.contains("sim_interval_ms"), "{stderr}");
        let output = run(binary, &["--config", path], &[]);
        assert_eq!(output.status.code(), Some(2), "{binary}: {output:?}");
        assert!(err_text(&output).contains("sim_intervl_ms"), "{output:?}");
    }
}

#[test]
fn names_that_are_no_settings_and_other_binaries_settings_are_accepted() {
    // One environment for all three binaries (compose's shared block,
    // scripts/run), with the k6 scripts' variables in it.
    let env = [
        ("AUCTION_SESSION_SECRET", TEST_SESSION_SECRET),
        ("AUCTION_SIM_INTERVAL_MS", "500"),
        ("AUCTION_WS_PING_MS", "1000"),
        ("AUCTION_SSE_RETRY_MS", "100"),
        ("AUCTION_ID", "1234"),
        ("AUCTION_TOKEN", "token"),
    ];
    for binary in BINARIES {
        let output = run(binary, &["--print-config"], &env);
        assert_eq!(output.status.code(), Some(0), "{binary}: {output:?}");
    }
}

#[test]
fn print_config_shows_the_effective_settings_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auction.toml");
    std::fs::write(&file, "ws_ping_ms = 5000\nlisten = \"127.0.0.1:7000\"\n").unwrap();
    let output = run(
        "ws-edge",
        &["--config", file.to_str().unwrap(), "--print-config"],
        &[
            ("AUCTION_SESSION_SECRET", TEST_SESSION_SECRET),
            (
                "AUCTION_REDIS_URL",
                "redis://app:hunter2@redis.internal:6379/0",
            ),
            ("AUCTION_LISTEN", "127.0.0.1:7001"),
        ],
    );
    let printed = out_text(&output);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!printed.contains(TEST_SESSION_SECRET), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    for expected in [
        "AUCTION_SESSION_SECRET=(set, redacted)  # environment",
        "AUCTION_REDIS_URL=\"redis://app:<redacted>@redis.internal:6379/0\"  # environment",
        // The environment wins over the file, which wins over the default.
        "AUCTION_LISTEN=\"127.0.0.1:7001\"  # environment",
        "AUCTION_WS_PING_MS=\"5000\"  # file",
        "AUCTION_OPS_LISTEN=\"0.0.0.0:9082\"  # default",
        "AUCTION_JWKS_URL=(unset)  # default",
    ] {
        assert!(printed.contains(expected), "{expected} in {printed}");
    }
    // Every setting of the binary is there.
    for setting in service_kit::spec::WS_EDGE.settings() {
        assert!(
            printed.contains(&format!("{}=", setting.env_name())),
            "{printed}"
        );
    }
    // A bad value is refused as on a real start.
    let output = run(
        "ws-edge",
        &["--print-config"],
        &[("AUCTION_WS_PING_MS", "often")],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn bidder_token_still_mints_a_token() {
    let output = run(
        "bidder",
        &["token", "--name", "Ops", "--role", "seller"],
        &[("AUCTION_SESSION_SECRET", TEST_SESSION_SECRET)],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(out_text(&output).trim().split('.').count(), 3, "{output:?}");
    let output = run("bidder", &["token", "--help"], &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(out_text(&output).contains("--name"), "{output:?}");
}
