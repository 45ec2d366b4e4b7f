//! Rows of the embedded store: a task or a step read from its JSON body,
//! and a transition rendered on a task's row.

use rusqlite::{OptionalExtension, params};

use crate::model::{StepMeta, Task};
use crate::schema;
use crate::store::StoreError;
use crate::time::Timestamp;
use crate::transition::{Transition, Write};

#[allow(clippy::needless_pass_by_value)] // shaped for `map_err(q)`
pub(super) fn q(e: rusqlite::Error) -> StoreError {
    StoreError::Service {
        operation: "SQLite",
        message: e.to_string(),
    }
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("model types serialise")
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    key: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

pub(super) fn read_step(
    tx: &rusqlite::Transaction<'_>,
    step: &str,
) -> Result<Option<StepMeta>, StoreError> {
    tx.query_row("SELECT meta FROM steps WHERE step = ?1", [step], |r| {
        r.get::<_, String>(0)
    })
    .optional()
    .map_err(q)?
    .map(|text| from_json(step, &text))
    .transpose()
}

pub(super) fn read_task(
    tx: &rusqlite::Transaction<'_>,
    step: &str,
    id: &str,
) -> Result<Option<Task>, StoreError> {
    tx.query_row(
        "SELECT body FROM tasks WHERE step = ?1 AND task_id = ?2",
        [step, id],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .map_err(q)?
    .map(|text| from_json(&format!("{step}/{id}"), &text))
    .transpose()
}

/// Renders `t` on the task `task_id` of `meta`: reads it, checks the
/// guard and writes the result, all inside the caller's transaction.
/// `None`: the guard did not hold and nothing was written.
pub(super) fn apply(
    tx: &rusqlite::Transaction<'_>,
    meta: &StepMeta,
    task_id: &str,
    t: &Transition,
) -> Result<Option<Task>, StoreError> {
    let current = read_task(tx, &meta.step, task_id)?;
    let Some(after) = t.apply(current.as_ref()) else {
        return Ok(None);
    };
    if let Write::Delete = t.write {
        tx.prepare_cached("DELETE FROM tasks WHERE step = ?1 AND task_id = ?2")
            .map_err(q)?
            .execute(params![meta.step, task_id])
            .map_err(q)?;
        return Ok(Some(after));
    }
    let sql = match t.write {
        // The guard said absent; a plain INSERT fails loudly if it is not.
        Write::Put(_) => {
            "INSERT INTO tasks (step, task_id, state, state_at, attempt, owner, body, shard)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        }
        Write::Delete => unreachable!("handled above"),
        Write::Update(_) => {
            "UPDATE tasks SET state = ?3, state_at = coalesce(?4, state_at), attempt = ?5,
                owner = ?6, body = ?7
             WHERE step = ?1 AND task_id = ?2 AND shard = ?8"
        }
    };
    tx.prepare_cached(sql)
        .map_err(q)?
        .execute(params![
            meta.step,
            task_id,
            t.to.as_str(),
            t.state_at.map(Timestamp::as_millis),
            after.attempt,
            after.owner,
            to_json(&after),
            schema::shard_of(task_id, meta.shards)
        ])
        .map_err(q)?;
    Ok(Some(after))
}
