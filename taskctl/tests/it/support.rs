//! Driving the real `taskctl` binary.

use std::process::{Command, Output};

pub use testkit::{TestTable, endpoint, samples_2504, unique_table};

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
