//! The test harness: a table per test, the real `taskctl` binary, and a
//! request-counting interceptor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use taskfleet::DynamoStore;

/// The DynamoDB Local endpoint, or a panic that says how to get one.
#[track_caller]
pub fn endpoint() -> String {
    std::env::var("TASKFLEET_TEST_DYNAMODB").unwrap_or_else(|_| {
        panic!(
            "TASKFLEET_TEST_DYNAMODB is not set: these tests need DynamoDB Local. \
             Run them with `bash scripts/test`, which installs and starts it."
        )
    })
}

/// The sample sheet shared by the project.
pub fn samples_2504() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/samples-2504.csv")
}

/// A table name no other test uses.
pub fn unique_table(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Counts the HTTP requests a client sends (retries included).
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<AtomicUsize>);

impl RequestCounter {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    pub fn reset(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A client for DynamoDB Local that counts its requests.
pub fn client(counter: &RequestCounter) -> Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .interceptor(counter.clone())
        .build();
    Client::from_conf(conf)
}

/// One test's table: created through `taskctl init`, reachable both
/// through the binary and through the library.
pub struct TestTable {
    pub name: String,
    pub store: DynamoStore,
    pub requests: RequestCounter,
    pub dir: tempfile::TempDir,
}

impl TestTable {
    /// A new, initialised table.
    #[track_caller]
    pub fn new(label: &str) -> Self {
        let name = unique_table(label);
        let requests = RequestCounter::default();
        let store = DynamoStore::new(client(&requests), &name, endpoint());
        let t = Self {
            name,
            store,
            requests,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        t.taskctl(&["init"]).ok();
        t
    }

    /// `taskctl --table NAME ARGS...` against DynamoDB Local.
    pub fn taskctl(&self, args: &[&str]) -> Run {
        let mut all = vec!["--table", &self.name];
        all.extend_from_slice(args);
        taskctl_with(&all, &[("TASKFLEET_ENDPOINT", endpoint().as_str())])
    }

    /// Writes `content` to a file in the test's directory.
    pub fn file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write test file");
        path
    }

    /// Every item in the table, sorted: for "nothing changed" checks. A
    /// scan is fine here; the product never scans.
    pub async fn dump(&self) -> BTreeMap<String, serde_json::Value> {
        let items: Vec<_> = self
            .store
            .client()
            .scan()
            .table_name(&self.name)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .expect("scan");
        items
            .into_iter()
            .map(|mut item| {
                let key = format!("{:?}/{:?}", item.remove("pk"), item.remove("sk"));
                // JSON values compare as maps, whatever the attribute order.
                let value: serde_json::Value = serde_dynamo::from_item(item).expect("item as JSON");
                (key, value)
            })
            .collect()
    }

    /// Number of task items of `step` (by scan; tests only).
    pub async fn task_count(&self, step: &str) -> usize {
        self.dump()
            .await
            .keys()
            .filter(|k| k.starts_with(&format!("Some(S(\"{step}#")))
            .count()
    }
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

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout()))
    }
}

/// Runs the real `taskctl` binary with test credentials. `env` may hold
/// `TASKFLEET_ENDPOINT`, turned into `--endpoint-url`.
pub fn taskctl_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskctl"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
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
