//! What a store reports when it fails: one sentence a person can act on,
//! and whether a retry can help.

/// A real failure of a store, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The table is not there.
    #[error(
        "table '{table}' does not exist at {endpoint}; create it with `taskctl init --table {table}`"
    )]
    TableNotFound {
        /// The table.
        table: String,
        /// Where we looked.
        endpoint: String,
    },
    /// The embedded store file does not exist yet.
    #[error(
        "there is no task store at {path}; create it with `taskctl --table sqlite://{path} init` (or just `taskctl init` for the default)"
    )]
    NoEmbeddedStore {
        /// The file.
        path: String,
    },
    /// The table is there but is not the task table this version expects.
    #[error("table '{table}' does not match the task table schema:\n  - {}\nUse another --table name, or recreate the table with `taskctl init`", differences.join("\n  - "))]
    SchemaMismatch {
        /// The table.
        table: String,
        /// What differs, one line each.
        differences: Vec<String>,
    },
    /// No credentials could be found.
    #[error(
        "no AWS credentials found ({detail}); set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where an instance role is available"
    )]
    NoCredentials {
        /// What the SDK said.
        detail: String,
    },
    /// No region is configured.
    #[error("no AWS region configured; set AWS_REGION or pass --region")]
    NoRegion,
    /// The service refused the credentials or the action.
    #[error("{operation} was refused: {message}; check the credentials and the IAM policy")]
    AccessDenied {
        /// The request.
        operation: &'static str,
        /// What the service said.
        message: String,
    },
    /// The endpoint could not be reached.
    #[error(
        "cannot reach DynamoDB at {endpoint} ({detail}); check --endpoint-url / AWS_ENDPOINT_URL and that the service is up"
    )]
    Unreachable {
        /// Where we tried.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// The service kept asking us to slow down or retry.
    #[error(
        "{operation} still throttled or unprocessed after {attempts} tries ({remaining} items not written); nothing was lost: run the same command again to write the rest"
    )]
    RetriesExhausted {
        /// The request.
        operation: &'static str,
        /// Tries made.
        attempts: u32,
        /// Items not written.
        remaining: usize,
    },
    /// A step that was named does not exist.
    #[error(
        "step '{step}' does not exist in table '{table}'; load it first with `taskctl load --step {step} ...`"
    )]
    StepNotFound {
        /// The step.
        step: String,
        /// The table.
        table: String,
    },
    /// A request to change a step's fixed layout.
    #[error(
        "step '{step}' was created with {existing} shards; the shard count is fixed when a step is created (asked for {requested})"
    )]
    ShardsFixed {
        /// The step.
        step: String,
        /// Its shard count.
        existing: u16,
        /// What was asked.
        requested: u16,
    },
    /// A first load was held up past its lock, and the step may have been
    /// taken over by another load.
    #[error(
        "the first load of step '{step}' was held up past its lock (a paused process or a store that stopped answering); nothing was lost: run the same load again, which recounts the step and writes the rest"
    )]
    LoadLockLost {
        /// The step.
        step: String,
    },
    /// Anything else the service said.
    #[error("{operation} failed: {message}")]
    Service {
        /// The request.
        operation: &'static str,
        /// What the service said, with its error code.
        message: String,
    },
    /// An item in the table is not what this version writes.
    #[error("item {key} in the table is malformed: {detail}")]
    Corrupt {
        /// The item's key.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

impl StoreError {
    /// Whether no retry will fix it: something is missing or not allowed
    /// (no table, store or step; no credentials or region; access denied;
    /// a table of another schema). The agent stops on these (exit 3), and
    /// `taskctl` exits 3.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::TableNotFound { .. }
                | StoreError::NoEmbeddedStore { .. }
                | StoreError::StepNotFound { .. }
                | StoreError::NoCredentials { .. }
                | StoreError::NoRegion
                | StoreError::AccessDenied { .. }
                | StoreError::SchemaMismatch { .. }
        )
    }
}
