//! Reading tasks by key and by shard (`taskctl where`, `taskctl export`),
//! and the records of loads, in the embedded store.

use rusqlite::OptionalExtension as _;

use super::{from_json, q};
use crate::model::{LoadRecord, Task, TaskPage, TaskSummary};
use crate::store::StoreError;

/// Keeps a load's record.
pub(super) fn record_load(
    tx: &rusqlite::Transaction<'_>,
    step: &str,
    record: &LoadRecord,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(record).expect("a load record always serialises");
    tx.execute(
        "INSERT INTO loads (step, at, record) VALUES (?1, ?2, ?3)",
        rusqlite::params![step, record.at.as_millis(), body],
    )
    .map_err(q)?;
    Ok(())
}

/// The newest `limit` load records of `step`.
pub(super) fn loads(
    tx: &rusqlite::Transaction<'_>,
    step: &str,
    limit: usize,
) -> Result<Vec<LoadRecord>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = tx
        .prepare_cached(
            "SELECT record FROM loads WHERE step = ?1 ORDER BY at DESC, rowid DESC LIMIT ?2",
        )
        .map_err(q)?;
    let rows = stmt
        .query_map(rusqlite::params![step, limit], |r| r.get::<_, String>(0))
        .map_err(q)?;
    rows.map(|row| from_json(&format!("load record of {step}"), &row.map_err(q)?))
        .collect()
}

/// Task `id` in every step where it exists, in step order.
pub(super) fn find(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
) -> Result<Vec<TaskSummary>, StoreError> {
    let steps: Vec<String> = {
        let mut stmt = tx
            .prepare_cached("SELECT step FROM steps ORDER BY step")
            .map_err(q)?;
        stmt.query_map([], |r| r.get(0))
            .map_err(q)?
            .collect::<Result<_, _>>()
            .map_err(q)?
    };
    let mut stmt = tx
        .prepare_cached("SELECT body FROM tasks WHERE step = ?1 AND task_id = ?2")
        .map_err(q)?;
    let mut out = Vec::new();
    for step in &steps {
        let body: Option<String> = stmt
            .query_row([step, id], |r| r.get(0))
            .optional()
            .map_err(q)?;
        if let Some(body) = body {
            let task: Task = from_json(&format!("{step}/{id}"), &body)?;
            out.push(TaskSummary::of(&task));
        }
    }
    Ok(out)
}

/// Up to `limit` tasks of a shard in id order, after `after`.
pub(super) fn shard_page(
    tx: &rusqlite::Transaction<'_>,
    step: &str,
    shard: u16,
    after: Option<&str>,
    limit: usize,
) -> Result<TaskPage, StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT task_id, body FROM tasks WHERE step = ?1 AND shard = ?2 AND task_id > ?3
             ORDER BY task_id LIMIT ?4",
        )
        .map_err(q)?;
    let rows = stmt
        .query_map(
            rusqlite::params![
                step,
                i64::from(shard),
                after.unwrap_or(""),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .map_err(q)?;
    let mut tasks = Vec::new();
    for row in rows {
        let (id, body) = row.map_err(q)?;
        let task: Task = from_json(&format!("{step}/{id}"), &body)?;
        tasks.push(TaskSummary::of(&task));
    }
    let next = (tasks.len() >= limit.max(1))
        .then(|| tasks.last().map(|t| t.task_id.clone()))
        .flatten();
    Ok(TaskPage { tasks, next })
}
