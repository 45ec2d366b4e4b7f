//! The task table's schema, named once.
//!
//! Every attribute, index, key format and condition expression that any
//! part of the product uses is defined here; the terraform in `terraform/`
//! and the README's schema section follow this module, and tests check that
//! they agree.
//!
//! # Items
//!
//! One table holds three kinds of item, told apart by their partition key.
//! Step names are safe identifiers (no `@`, no `#`), so the kinds can never
//! collide.
//!
//! | item    | `pk`                     | `sk`        |
//! |---------|--------------------------|-------------|
//! | task    | `{step}#{shard:03}`      | task id     |
//! | step    | `@steps`                 | step name   |
//! | counter | `@counts#{step}`         | `{shard:03}`|
//! | load    | `@loads#{step}`          | `{at:013}#{nonce}` |
//!
//! A load item records one `taskctl load` of the step
//! ([`crate::model::LoadRecord`], as JSON in `record`): its own partition,
//! so that a step's history of loads never grows its step item and is
//! read newest first with one query.
//!
//! A task's shard is `xxh3(task id) mod shards`, with `shards` fixed when
//! the step is created. Spreading a step over shards keeps loads, claims and
//! counter updates off a single hot partition key.
//!
//! # The `by_state` index
//!
//! A global secondary index keyed by `state_pk = {step}#{state}#{shard:03}`
//! and `state_at` (a number, epoch ms). Its meaning depends on the state:
//!
//! - `pending`: `state_at` is when the task becomes claimable (load time, or
//!   later for a retry with backoff). Claimable = `state_at <= now`.
//! - `running`: `state_at` is the lease expiry. Reclaimable =
//!   `state_at < now - skew margin`. The number of running tasks is bounded
//!   by the fleet, so counting them is cheap.
//! - `done`/`failed`: `state_at` is the finish time, for listing.
//!
//! Index entries are only hints: a claim is always one conditional write on
//! the task itself.
//!
//! # Counters
//!
//! Per (step, shard), a counter item holds `loaded`, `done`, `failed`,
//! `waiting` and `cancelled`, changed in the same transaction as the task
//! transition they count (loads add to `loaded` right after each
//! successful batch). On a step loaded `--expire-after` it also holds
//! `expiring_{at}`: how many of its `done` tasks expire at `at` (epoch
//! seconds, the end of an expiry slot). Expired tasks are still in
//! `loaded` and `done` (nobody writes when the table's TTL deletes them):
//! the counts are those less every `expiring_*` whose time has come, so
//! they are exact whether or not the table has deleted the tasks yet.
//! `status` reads the step list, the counters of each step and the running
//! counts from the index: a number of requests that depends on the number of
//! steps and shards, never on the number of tasks.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use xxhash_rust::xxh3::xxh3_64;

use crate::model::TaskState;

/// Attribute names. Task attributes match the field names of
/// [`crate::model::Task`].
pub mod attr {
    /// Partition key of every item (S).
    pub const PK: &str = "pk";
    /// Sort key of every item (S).
    pub const SK: &str = "sk";
    /// Partition key of the `by_state` index (S): `{step}#{state}#{shard}`.
    pub const STATE_PK: &str = "state_pk";
    /// Sort key of the `by_state` index (N, epoch ms).
    pub const STATE_AT: &str = "state_at";
    /// TTL attribute (N, epoch seconds): set on `done` tasks of a step
    /// loaded `--expire-after` ([`crate::model::StepSettings::expiry_of`]).
    pub const EXPIRES_AT: &str = "expires_at";

    /// Task: its step (S).
    pub const STEP: &str = "step";
    /// Task: its id (S).
    pub const TASK_ID: &str = "task_id";
    /// Task: its state (S).
    pub const STATE: &str = "state";
    /// Task: number of claims, the fencing token (N).
    pub const ATTEMPT: &str = "attempt";
    /// Task: failed attempts counted against the limit (N).
    pub const FAILED_ATTEMPTS: &str = "failed_attempts";
    /// Task: the script text (S).
    pub const TASK_SCRIPT: &str = "Task_Script";
    /// Task: SHA-256 of the script (S).
    pub const SCRIPT_DIGEST: &str = "script_digest";
    /// Task: the sheet row as environment (M of S).
    pub const ENV: &str = "env";
    /// Variable to the column it came from, where they differ.
    pub const COLUMNS: &str = "columns";
    /// Task: load time (N).
    pub const CREATED_AT: &str = "created_at";
    /// Task: last write (N).
    pub const UPDATED_AT: &str = "updated_at";
    /// Task: when a pending task becomes claimable again (N, epoch ms).
    pub const READY_AT: &str = "ready_at";
    /// Task: current owner (S).
    pub const OWNER: &str = "owner";
    /// Task: absolute lease expiry (N, epoch ms).
    pub const LEASE_EXPIRES_AT: &str = "lease_expires_at";
    /// Task: start of the current attempt (N).
    pub const STARTED_AT: &str = "started_at";
    /// Task: end (N).
    pub const FINISHED_AT: &str = "finished_at";
    /// Task: last exit code (N).
    pub const EXIT_CODE: &str = "exit_code";
    /// Task: last signal (N).
    pub const SIGNAL: &str = "signal";
    /// Task: last failure class (S).
    pub const FAILURE_CLASS: &str = "failure_class";
    /// Task: tail of the last output (S).
    pub const OUTPUT_TAIL: &str = "output_tail";
    /// Task: location of the last full log (S).
    pub const LOG_URI: &str = "log_uri";
    /// Task: who last put it back from failed (`taskctl retry`) (S).
    pub const RETRIED_BY: &str = "retried_by";
    /// Task: when (N, epoch ms).
    pub const RETRIED_AT: &str = "retried_at";
    /// Task: who cancelled it (S).
    pub const CANCELLED_BY: &str = "cancelled_by";
    /// Task: when (N, epoch ms).
    pub const CANCELLED_AT: &str = "cancelled_at";
    /// Task: bounded list of past attempts (L of M).
    pub const HISTORY: &str = "history";
    /// Task: the steps it waits for, as loaded (L of S).
    pub const AFTER: &str = "after";
    /// Task: those not done yet (L of S).
    pub const WAITING_ON: &str = "waiting_on";
    /// Task: the steps whose task of this id waits for it (L of S).
    pub const DEPENDENTS: &str = "dependents";
    /// Task: why it waits, or failed without running (S).
    pub const REASON: &str = "reason";
    /// Task: the step a retry rule moved its run to (S).
    pub const ESCALATED_TO: &str = "escalated_to";

    /// Step: number of shards (N).
    pub const SHARDS: &str = "shards";
    /// Step: settings (M).
    pub const SETTINGS: &str = "settings";
    /// The first-load lock of a step item (M), while its first load runs.
    pub const FIRST_LOAD: &str = "first_load";

    /// Counter: tasks loaded (N).
    pub const LOADED: &str = "loaded";
    /// Counter: tasks done (N).
    pub const DONE: &str = "done";
    /// Counter: tasks failed (N).
    pub const FAILED: &str = "failed";
    /// Counter: tasks waiting (N).
    pub const WAITING: &str = "waiting";
    /// Counter: tasks cancelled (N).
    pub const CANCELLED: &str = "cancelled";
    /// Counter: `done` tasks that expire at the end of one expiry slot
    /// (N), named [`super::expiring_attr`]`(slot end)`.
    pub const EXPIRING_PREFIX: &str = "expiring_";
    /// Load item: the [`crate::model::LoadRecord`] as JSON (S).
    pub const RECORD: &str = "record";
}

/// The global secondary index over task states.
pub const BY_STATE_INDEX: &str = "by_state";

/// Attributes projected into [`BY_STATE_INDEX`] besides the keys: enough to
/// list failed tasks without reading them.
pub const BY_STATE_PROJECTED: [&str; 6] = [
    attr::ATTEMPT,
    attr::EXIT_CODE,
    attr::SIGNAL,
    attr::FAILURE_CLASS,
    attr::FINISHED_AT,
    attr::OWNER,
];

/// Partition key of the step list.
pub const STEPS_PK: &str = "@steps";

/// Default number of shards for a new step.
pub const DEFAULT_SHARDS: u16 = 16;

/// Most shards a step may have (status reads one counter and one running
/// count per shard).
pub const MAX_SHARDS: u16 = 256;

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Room kept free on every task at load time for what attempts add later
/// (output tail, history, owner, times).
pub const RUNTIME_RESERVE_BYTES: usize = 48 * 1024;

/// Most actions in one `TransactWriteItems`.
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// Most bytes of items one load transaction carries (DynamoDB allows
/// 4 MB per transaction; the rest is room for keys and expressions).
pub const MAX_TRANSACTION_BYTES: usize = 3 * 1024 * 1024;

/// Most a write may make a task item: the item limit less room for the
/// keys and index attributes the store adds.
pub const MAX_WRITE_BYTES: usize = MAX_ITEM_BYTES - 2 * 1024;

/// Size of `task` as an item, without the keys and index attributes (see
/// [`MAX_WRITE_BYTES`]).
pub fn task_size(task: &crate::model::Task) -> usize {
    let item: HashMap<String, AttributeValue> =
        serde_dynamo::to_item(task).expect("a task always serialises");
    item_size(&item)
}

/// Longest task id: DynamoDB's limit for a sort key.
pub const MAX_TASK_ID_BYTES: usize = 1024;

/// The shard of a task: stable across versions and machines.
pub fn shard_of(task_id: &str, shards: u16) -> u16 {
    (xxh3_64(task_id.as_bytes()) % u64::from(shards.max(1))) as u16
}

/// Partition key of a task.
pub fn task_pk(step: &str, shard: u16) -> String {
    format!("{step}#{shard:03}")
}

/// Partition key of a step's counters.
pub fn counts_pk(step: &str) -> String {
    format!("@counts#{step}")
}

/// The partition key of a step's load records.
pub fn loads_pk(step: &str) -> String {
    format!("@loads#{step}")
}

/// The sort key of a load record: its time, so that a query reads them in
/// order, and a nonce, so that two loads in one millisecond both stay.
pub fn load_sk(at: crate::time::Timestamp, nonce: u32) -> String {
    format!("{:013}#{nonce:08x}", at.as_millis())
}

/// The counter of the `done` tasks that expire at `at` (epoch seconds,
/// the end of an expiry slot): `expiring_{at}`.
pub fn expiring_attr(at: i64) -> String {
    format!("{}{at}", attr::EXPIRING_PREFIX)
}

/// The expiry time an [`expiring_attr`] counter counts for.
pub fn expiring_at(name: &str) -> Option<i64> {
    name.strip_prefix(attr::EXPIRING_PREFIX)?.parse().ok()
}

/// Sort key of a shard's counter.
pub fn shard_sk(shard: u16) -> String {
    format!("{shard:03}")
}

/// Partition key of a task's entry in [`BY_STATE_INDEX`].
pub fn state_pk(step: &str, state: TaskState, shard: u16) -> String {
    format!("{step}#{}#{shard:03}", state.as_str())
}

/// The primary key of a task item.
pub fn task_key(step: &str, shards: u16, task_id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (
            attr::PK.to_owned(),
            AttributeValue::S(task_pk(step, shard_of(task_id, shards))),
        ),
        (attr::SK.to_owned(), AttributeValue::S(task_id.to_owned())),
    ])
}

/// Whether `name` may be a step name: it names a launch template, a
/// partition key prefix and log paths, so it is kept to a safe identifier.
pub fn is_valid_step_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Size of an item as DynamoDB counts it against the 400 KB limit:
/// attribute names plus values, with the documented overheads for numbers,
/// lists and maps.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => n.len().div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{AttemptRecord, FailureClass, Task};
    use crate::time::Timestamp;

    fn full_task() -> Task {
        let t = Timestamp::from_millis(1);
        Task {
            step: "align".into(),
            task_id: "HG00098".into(),
            state: TaskState::Failed,
            attempt: 2,
            failed_attempts: 2,
            script: "echo".into(),
            script_digest: "d".into(),
            env: BTreeMap::from([("SAMPLE".into(), "HG00098".into())]),
            columns: BTreeMap::from([("SAMPLE".into(), "sample".into())]),
            created_at: t,
            updated_at: t,
            ready_at: Some(t),
            owner: Some("i-1/w0".into()),
            lease_expires_at: Some(t),
            started_at: Some(t),
            finished_at: Some(t),
            exit_code: Some(3),
            signal: Some(9),
            failure_class: Some(FailureClass::Exit),
            output_tail: Some("x".into()),
            log_uri: Some("s3://b/k".into()),
            retried_by: Some("ana".into()),
            retried_at: Some(t),
            cancelled_by: Some("bo".into()),
            cancelled_at: Some(t),
            history: vec![AttemptRecord {
                attempt: 1,
                owner: "o".into(),
                started_at: t,
                finished_at: t,
                outcome: TaskState::Pending,
                exit_code: Some(3),
                signal: None,
                failure_class: Some(FailureClass::Exit),
                log_uri: None,
                provenance: None,
            }],
            after: vec!["align".into()],
            waiting_on: vec!["align".into()],
            dependents: vec!["qc".into()],
            reason: Some("r".into()),
            escalated_to: Some("big".into()),
            expires_at: Some(1_900_000_000),
        }
    }

    #[test]
    fn every_task_field_has_a_named_attribute_and_back() {
        let item: HashMap<String, AttributeValue> = serde_dynamo::to_item(full_task()).unwrap();
        let named = [
            attr::STEP,
            attr::TASK_ID,
            attr::STATE,
            attr::ATTEMPT,
            attr::FAILED_ATTEMPTS,
            attr::TASK_SCRIPT,
            attr::SCRIPT_DIGEST,
            attr::ENV,
            attr::COLUMNS,
            attr::CREATED_AT,
            attr::UPDATED_AT,
            attr::READY_AT,
            attr::OWNER,
            attr::LEASE_EXPIRES_AT,
            attr::STARTED_AT,
            attr::FINISHED_AT,
            attr::EXIT_CODE,
            attr::SIGNAL,
            attr::FAILURE_CLASS,
            attr::OUTPUT_TAIL,
            attr::LOG_URI,
            attr::RETRIED_BY,
            attr::RETRIED_AT,
            attr::CANCELLED_BY,
            attr::CANCELLED_AT,
            attr::HISTORY,
            attr::AFTER,
            attr::WAITING_ON,
            attr::DEPENDENTS,
            attr::REASON,
            attr::ESCALATED_TO,
            attr::EXPIRES_AT,
        ];
        let mut serialized: Vec<&str> = item.keys().map(String::as_str).collect();
        serialized.sort_unstable();
        let mut expected = named.to_vec();
        expected.sort_unstable();
        assert_eq!(serialized, expected);
        for p in BY_STATE_PROJECTED {
            assert!(
                named.contains(&p),
                "projected attribute {p} is not a task attribute"
            );
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values, computed once: a different hash (or a different
        // reduction to a shard) would put stored tasks where no reader
        // looks for them.
        let pinned = [
            ("HG00098", 12, 2, 156),
            ("NA12878", 4, 6, 116),
            ("S0000000", 6, 4, 214),
            ("S0009999", 6, 0, 198),
            ("A", 5, 1, 133),
            ("chr1:1-1000", 14, 2, 14),
        ];
        for (id, of16, of7, of256) in pinned {
            assert_eq!(
                (shard_of(id, 16), shard_of(id, 7), shard_of(id, 256)),
                (of16, of7, of256),
                "{id}"
            );
        }
        assert_eq!(xxh3_64(b"HG00098"), 0xf006_a34a_f559_a49c);
        // A zero shard count (never stored) must not divide by zero.
        assert_eq!(shard_of("HG00098", 0), 0);
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[usize::from(shard_of(&format!("S{i}"), 16))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "uneven spread: {seen:?}");
        assert_eq!(task_pk("align", 7), "align#007");
        assert_eq!(
            state_pk("align", TaskState::Pending, 7),
            "align#pending#007"
        );
    }

    #[test]
    fn step_names_are_safe_identifiers() {
        for ok in ["align", "call-variants", "qc_2", "A"] {
            assert!(is_valid_step_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1st",
            "has space",
            "a#b",
            "@steps",
            "a/b",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_step_name(bad), "{bad}");
        }
    }

    #[test]
    fn terraform_table_matches_the_schema() {
        let tf = include_str!("../../terraform/table.tf");
        let squeezed: String = tf.split_whitespace().collect::<Vec<_>>().join(" ");
        for needle in [
            format!("hash_key = \"{}\"", attr::PK),
            format!("range_key = \"{}\"", attr::SK),
            format!("name = \"{}\" type = \"S\"", attr::PK),
            format!("name = \"{}\" type = \"S\"", attr::SK),
            format!("name = \"{}\" type = \"S\"", attr::STATE_PK),
            format!("name = \"{}\" type = \"N\"", attr::STATE_AT),
            format!(
                "name = \"{BY_STATE_INDEX}\" hash_key = \"{}\" range_key = \"{}\" projection_type = \"INCLUDE\"",
                attr::STATE_PK,
                attr::STATE_AT
            ),
            format!(
                "non_key_attributes = [{}]",
                BY_STATE_PROJECTED.map(|a| format!("\"{a}\"")).join(", ")
            ),
            format!("attribute_name = \"{}\" enabled = true", attr::EXPIRES_AT),
            "billing_mode = \"PAY_PER_REQUEST\"".to_owned(),
        ] {
            assert!(
                squeezed.contains(&needle),
                "terraform/table.tf lacks `{needle}`"
            );
        }
    }

    #[test]
    fn item_size_counts_names_and_values() {
        let item = HashMap::from([
            ("ab".to_owned(), AttributeValue::S("xyz".into())),
            ("n".to_owned(), AttributeValue::N("1234".into())),
        ]);
        assert_eq!(item_size(&item), 2 + 3 + 1 + 3);
    }
}
