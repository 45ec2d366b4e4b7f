//! The harness the integration tests share: a fresh table per test on the
//! DynamoDB Local that `scripts/test` starts, a client that counts its
//! requests, and whole-table dumps for "nothing changed" checks.
//!
//! Tests find DynamoDB Local through `TASKFLEET_TEST_DYNAMODB`, and moto
//! (EC2) through `TASKFLEET_TEST_MOTO`. Without them they fail with a
//! message saying how to run them; they never skip.
//!
//! For fault tests:
//! - [`DynamoLocal`]: a private emulator a test may freeze, so that the
//!   tests sharing the common one are not disturbed;
//! - [`Proxy`]: a TCP relay that can be cut, to take one worker off the
//!   network while others still reach the store;
//! - [`RunLog`]: a log that task scripts append to, and the check that no
//!   task ever ran twice at the same time.
#![allow(missing_docs, clippy::missing_panics_doc)]

mod emulator;
mod imds;
mod proxy;
mod runlog;

pub use emulator::DynamoLocal;
pub use imds::{Imds, InstanceInfo};
pub use proxy::Proxy;
pub use runlog::{Run, RunLog, Runs};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use taskfleet::DynamoStore;
use taskfleet::load::{self, LoadReport, LoadRequest};
use taskfleet::model::Task;
use taskfleet::sheet::{Sheet, SheetOptions};
use taskfleet::store::sqlite::SqliteStore;
use taskfleet::store::{SettingsChange, Store, TaskStore};

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

/// The moto endpoint (EC2 and S3), or a panic that says how to get one.
#[track_caller]
pub fn moto_endpoint() -> String {
    std::env::var("TASKFLEET_TEST_MOTO").unwrap_or_else(|_| {
        panic!(
            "TASKFLEET_TEST_MOTO is not set: these tests need moto (EC2). \
             Run them with `bash scripts/test`, which installs and starts it \
             (scripts/with-dynamodb-local starts it from scripts/install-moto's venv)."
        )
    })
}

/// The project's shared 2,504-sample sheet (in `../shared` beside the
/// repository).
pub fn samples_2504() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/samples-2504.csv");
    assert!(
        path.exists(),
        "{} is missing: the tests expect the shared/ folder beside the repository",
        path.display()
    );
    path
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

/// Counts the HTTP requests a client sends (retries included), in all and
/// per operation.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<AtomicUsize>, Arc<Mutex<BTreeMap<String, usize>>>);

impl RequestCounter {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Requests of one operation (`BatchWriteItem`, ...).
    pub fn of(&self, operation: &str) -> usize {
        self.1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    pub fn reset(&self) {
        self.0.store(0, Ordering::SeqCst);
        self.1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
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
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let operation = cfg
            .load::<Metadata>()
            .map_or("unknown", Metadata::name)
            .to_owned();
        *self
            .1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(operation)
            .or_default() += 1;
        Ok(())
    }
}

/// A client for DynamoDB Local that counts its requests.
pub fn client(counter: &RequestCounter) -> Client {
    client_on(&endpoint(), counter)
}

/// A client for the DynamoDB Local at `endpoint` (a private emulator, or a
/// proxy in front of one) that counts its requests.
pub fn client_on(endpoint: &str, counter: &RequestCounter) -> Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .interceptor(counter.clone())
        .build();
    Client::from_conf(conf)
}

/// Environment for a child process (a binary under test) that talks to
/// DynamoDB Local with test credentials and nothing else.
pub fn child_env() -> Vec<(&'static str, String)> {
    vec![
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", "/nonexistent".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// A sheet of `n` generated rows (`sample` = S0000000...).
pub fn generated_sheet(n: usize) -> String {
    let mut text = String::from("sample,population\n");
    for i in 0..n {
        let _ = writeln!(text, "S{i:07},POP{}", i % 26);
    }
    text
}

/// Loads `sheet` (CSV text) into `step` of any store, through the library.
pub async fn load_text<S: TaskStore>(
    store: &S,
    step: &str,
    script: &str,
    sheet: &str,
    settings: SettingsChange,
) -> LoadReport {
    let sheet = Sheet::parse(
        Path::new("test.csv"),
        sheet.as_bytes(),
        &SheetOptions::default(),
    )
    .expect("valid test sheet");
    let request = LoadRequest {
        step: step.into(),
        script: script.into(),
        settings,
        replace: false,
        concurrency: 8,
    };
    let prepared = load::prepare(request, sheet).expect("valid load");
    load::load(store, &prepared, &|_| {}).await.expect("load")
}

/// Which store a conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// DynamoDB Local.
    Dynamo,
    /// The embedded SQLite store.
    Sqlite,
}

/// A fresh store of either kind, with the `--table` value that names it.
pub struct TestStore {
    pub kind: Kind,
    pub store: Store,
    pub locator: String,
    pub dir: tempfile::TempDir,
    /// The DynamoDB endpoint the store lives at (`None` for SQLite).
    pub endpoint: Option<String>,
}

impl TestStore {
    /// A fresh store; DynamoDB tables live on the shared DynamoDB Local.
    pub async fn new(kind: Kind, label: &str) -> Self {
        match kind {
            Kind::Dynamo => Self::on(&endpoint(), label).await,
            Kind::Sqlite => Self::sqlite(),
        }
    }

    /// A fresh DynamoDB table on the emulator at `endpoint`.
    pub async fn on(endpoint: &str, label: &str) -> Self {
        let t = TestTable::on(endpoint, label).await;
        Self {
            kind: Kind::Dynamo,
            store: Store::Dynamo(t.store.clone()),
            locator: t.name.clone(),
            dir: t.dir,
            endpoint: Some(t.endpoint),
        }
    }

    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tasks.db");
        let (store, _) = SqliteStore::init(&path).expect("create the embedded store");
        Self {
            kind: Kind::Sqlite,
            store: Store::Sqlite(store),
            locator: format!("sqlite://{}", path.display()),
            dir,
            endpoint: None,
        }
    }

    /// A second, independent handle on the same store (another client, or
    /// another connection to the file), as another worker would have.
    pub fn other_handle(&self) -> Store {
        match &self.store {
            Store::Dynamo(d) => {
                let at = self.endpoint.clone().unwrap_or_else(endpoint);
                Store::Dynamo(DynamoStore::new(
                    client_on(&at, &RequestCounter::default()),
                    d.table(),
                    at,
                ))
            }
            Store::Sqlite(s) => {
                Store::Sqlite(SqliteStore::open(s.path()).expect("open the embedded store"))
            }
        }
    }

    /// Every stored task item of `step`, as stored (one entry per item:
    /// a task stored twice appears twice). A scan is fine here; the
    /// product never scans.
    pub async fn tasks(&self, step: &str) -> Vec<Task> {
        match &self.store {
            Store::Dynamo(d) => dynamo_tasks(d, step).await,
            Store::Sqlite(s) => {
                let conn = rusqlite::Connection::open(s.path()).expect("open the embedded store");
                let mut query = conn
                    .prepare("SELECT body FROM tasks WHERE step = ?1")
                    .expect("prepare");
                query
                    .query_map([step], |row| row.get::<_, String>(0))
                    .expect("query tasks")
                    .map(|body| serde_json::from_str(&body.expect("row")).expect("a stored task"))
                    .collect()
            }
        }
    }
}

/// Every task item of `step` in a DynamoDB table, by scan.
async fn dynamo_tasks(store: &DynamoStore, step: &str) -> Vec<Task> {
    let items: Vec<_> = store
        .client()
        .scan()
        .table_name(store.table())
        .filter_expression("begins_with(#pk, :prefix)")
        .expression_attribute_names("#pk", "pk")
        .expression_attribute_values(
            ":prefix",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("{step}#")),
        )
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("scan");
    items
        .into_iter()
        .map(|item| serde_dynamo::from_item(item).expect("a stored task"))
        .collect()
}

/// One test's table, created and active, with a store over it.
pub struct TestTable {
    pub name: String,
    pub store: DynamoStore,
    pub requests: RequestCounter,
    pub dir: tempfile::TempDir,
    /// The DynamoDB endpoint the table lives at.
    pub endpoint: String,
}

impl TestTable {
    /// A new, initialised table on the shared DynamoDB Local.
    pub async fn new(label: &str) -> Self {
        Self::on(&endpoint(), label).await
    }

    /// A new, initialised table on the emulator at `endpoint`.
    pub async fn on(endpoint: &str, label: &str) -> Self {
        let name = unique_table(label);
        let requests = RequestCounter::default();
        let store = DynamoStore::new(client_on(endpoint, &requests), &name, endpoint);
        store.init().await.expect("create the test table");
        Self {
            name,
            store,
            requests,
            dir: tempfile::tempdir().expect("temp dir"),
            endpoint: endpoint.to_owned(),
        }
    }

    /// Writes `content` to a file in the test's directory.
    pub fn file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write test file");
        path
    }

    /// Loads `sheet` (CSV text) into `step` through the library.
    pub async fn load_text(
        &self,
        step: &str,
        script: &str,
        sheet: &str,
        settings: SettingsChange,
    ) -> LoadReport {
        load_text(&self.store, step, script, sheet, settings).await
    }

    /// Loads `n` generated rows (`sample` = S0000000...).
    pub async fn load_generated(
        &self,
        step: &str,
        script: &str,
        n: usize,
        settings: SettingsChange,
    ) -> LoadReport {
        load_text(&self.store, step, script, &generated_sheet(n), settings).await
    }

    /// Every item in the table, by key. A scan is fine here; the product
    /// never scans.
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
