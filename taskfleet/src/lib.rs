//! The task model, the table schema and the stores behind `taskctl` and
//! `agent`.
//!
//! Every part of the product keeps the rules of the task contract: a task is
//! `running` for at most one (owner, attempt); every write after a claim is
//! fenced on that pair; loading is idempotent and validated before the first
//! write; nothing on a hot path reads the whole table.
//!
//! # Layout
//!
//! - [`model`]: what a task, a step and a status report are, as plain types.
//! - [`schema`]: every attribute, index, key format and expression of the
//!   DynamoDB table, named once. Terraform and the README follow it.
//! - [`sheet`]: reading and validating sample sheets (CSV/TSV) into tasks.
//! - [`envrules`]: what a script's environment holds: the names a column
//!   may not become, what the agent passes on, the kernel's size limits.
//! - [`load`]: loading a validated sheet into a store, with progress.
//! - [`logs`]: attempt logs in S3: their keys, streamed uploads, reading
//!   a log back from its URI.
//! - [`store`]: the stores. [`store::dynamo`] talks to DynamoDB.
//! - [`connect`]: building a store (and an EC2 client) from AWS
//!   configuration.
//! - [`iam`]: every AWS call each binary makes and the IAM actions that
//!   grant it; the interceptor that holds clients to it.
//! - [`fleet`]: the EC2 fleet: launch templates per step, launching
//!   workers, listing and terminating a step's instances.
//! - [`rules`]: a step's retry rules: what follows a failed attempt.
//! - [`retry`]: the jittered exponential backoff used around batch writes.
//! - [`transition`]: every change of a task's state (guard, changes,
//!   counters), defined once; both stores render it.
//! - [`time`]: epoch-millisecond timestamps, the unit the table stores.

pub mod connect;
pub mod envrules;
pub mod fleet;
pub mod iam;
pub mod load;
pub mod logs;
pub mod model;
pub mod retry;
pub mod rules;
pub mod schema;
pub mod sheet;
pub mod store;
pub mod time;
pub mod transition;

pub use model::{StepSettings, StepStatus, Task, TaskState};
pub use store::StoreError;
pub use store::dynamo::DynamoStore;
