//! Driving the real `taskctl` binary, and the `agent` binary beside it
//! that `taskctl launch --local` starts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::SystemTime;

pub use testkit::{TestTable, endpoint, moto_endpoint, samples_2504, unique_table};

/// An S3 client of moto at `endpoint` (path-style, test credentials).
pub fn moto_s3(endpoint: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .build(),
    )
}

/// A finished `taskctl` run.
#[derive(Debug)]
pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Panics with both streams unless the run succeeded.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert!(
            self.output.status.success(),
            "taskctl failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.output.status,
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Panics unless the run failed; returns stderr.
    #[track_caller]
    pub fn fails(&self) -> String {
        assert!(
            !self.output.status.success(),
            "taskctl should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self.stderr()
    }

    /// The exit code.
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout()))
    }
}

/// `taskctl --table NAME ARGS...` against a test table.
pub trait Taskctl {
    fn taskctl(&self, args: &[&str]) -> Run;
}

impl Taskctl for TestTable {
    fn taskctl(&self, args: &[&str]) -> Run {
        let mut all = vec!["--table", &self.name];
        all.extend_from_slice(args);
        let endpoint = endpoint();
        taskctl_with(&all, &[("TASKFLEET_ENDPOINT", endpoint.as_str())])
    }
}

/// Runs the real `taskctl` binary with test credentials. In `env`,
/// `TASKFLEET_ENDPOINT` becomes `--endpoint-url`, and an empty value
/// removes the variable.
pub fn taskctl_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    // `launch --local` starts the agent beside taskctl: it must be the
    // agent of these sources.
    fresh_agent();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskctl"));
    cmd.env_clear().envs(testkit::child_env());
    let mut all: Vec<String> = Vec::new();
    for (k, v) in env {
        if *k == "TASKFLEET_ENDPOINT" {
            all.push("--endpoint-url".into());
            all.push((*v).into());
        } else if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let output = cmd.args(&all).output().expect("run taskctl");
    Run { output }
}

/// The `agent` binary beside `taskctl`, built from the current sources.
///
/// `taskctl launch --local` runs the `agent` it finds beside itself. Cargo
/// builds it for `cargo test --workspace`, but not for `cargo test -p
/// taskctl`, which would then drive whatever agent an earlier build left
/// there. So, once per test run, the binary is compared with the sources
/// it is built from, and if it is missing or older, it is built with the
/// same cargo, profile and target directory as this test; if it is still
/// not fresh after that, the tests fail rather than run a stale agent.
pub fn fresh_agent() -> &'static Path {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| {
        let taskctl = Path::new(env!("CARGO_BIN_EXE_taskctl"));
        let out_dir = taskctl.parent().expect("taskctl is in a directory");
        let agent = out_dir.join(format!("agent{}", std::env::consts::EXE_SUFFIX));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sources = newest_source(&workspace);
        if modified(&agent).is_some_and(|built| built >= sources) {
            return agent;
        }
        build_agent(&workspace, out_dir);
        assert!(
            modified(&agent).is_some_and(|built| built >= sources),
            "{} is still missing or older than its sources after `cargo build -p agent`",
            agent.display()
        );
        agent
    })
}

/// The fresh agent on `step` of `table` (at `endpoint`, for DynamoDB
/// Local), with the test environment only, exiting 1 s after its step has
/// nothing to run, its attempts under `dir`.
pub fn agent_command(table: &str, endpoint: Option<&str>, dir: &Path, step: &str) -> Command {
    let mut cmd = Command::new(fresh_agent());
    cmd.env_clear()
        .envs(testkit::child_env())
        .args(["--table", table, "--step", step, "--idle-timeout", "1s"])
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--log-dir")
        .arg(dir.join("logs"));
    if let Some(e) = endpoint {
        cmd.args(["--endpoint-url", e]);
    }
    cmd
}

/// Runs `cmd` (an [`agent_command`]) to its end; it must exit 0.
pub fn run_agent(mut cmd: Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cargo build -p agent` into the directory this test's `taskctl` is in.
fn build_agent(workspace: &Path, out_dir: &Path) {
    let profile_dir = out_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let profile = if profile_dir == "debug" {
        "dev"
    } else {
        profile_dir
    };
    let target_dir = out_dir
        .parent()
        .expect("the profile directory is in the target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let out = Command::new(cargo)
        .args([
            "build", "--locked", "--quiet", "-p", "agent", "--bin", "agent",
        ])
        .args(["--profile", profile])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .expect("run cargo to build the agent");
    assert!(
        out.status.success(),
        "`cargo build -p agent` failed; taskctl's tests need the agent binary beside taskctl:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest modification time among what the agent is built from: its
/// crate, the library crate, and the workspace manifest and lock file.
fn newest_source(workspace: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut pending: Vec<PathBuf> = vec![
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
        workspace.join("agent/Cargo.toml"),
        workspace.join("agent/src"),
        workspace.join("taskfleet/Cargo.toml"),
        workspace.join("taskfleet/src"),
    ];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            let entries = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
            pending.extend(entries.map(|e| e.expect("directory entry").path()));
        } else if let Some(time) = modified(&path) {
            newest = newest.max(time);
        }
    }
    newest
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A fresh embedded store file in `dir`: its locator, and `taskctl` run
/// on it with the arguments given.
pub fn embedded(dir: &Path) -> (String, impl Fn(&[&str]) -> Run) {
    let table = format!("sqlite://{}", dir.join("tasks.db").display());
    let locator = table.clone();
    let run = move |args: &[&str]| {
        let mut all = vec!["--table", table.as_str()];
        all.extend_from_slice(args);
        taskctl_with(&all, &[])
    };
    (locator, run)
}
