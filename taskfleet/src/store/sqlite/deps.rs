//! Dependent tasks (`load --after`) in the embedded store. Everything one
//! write carries to its dependents is read and written inside the same
//! SQLite transaction, so nothing can change in between; the plan of what
//! to write is the shared one ([`crate::transition::deps`]).

use super::{apply, read_step, read_task};
use crate::model::{StepMeta, Task};
use crate::store::{InsertOutcome, StoreError};
use crate::time::Timestamp;
use crate::transition::deps::{self, Cascade};
use crate::transition::{self, Transition};

/// Writes `make(base)` on `base`'s task (`base` as the caller holds it,
/// with the stored task's dependents), and what it does to its dependents,
/// all at once. `None` when its guard does not hold on the stored task.
pub(super) fn end_in(
    tx: &rusqlite::Transaction<'_>,
    meta: &StepMeta,
    base: &Task,
    make: &dyn Fn(&Task) -> Transition,
) -> Result<Option<Task>, StoreError> {
    let Some(current) = read_task(tx, &meta.step, &base.task_id)? else {
        return Ok(None);
    };
    let mut base = base.clone();
    deps::rebase(&mut base, &current);
    let own = make(&base);
    if !own.allows(Some(&current)) {
        return Ok(None);
    }
    if !crate::transition::escalate::needs_plan(current.state, &own) {
        return apply(tx, meta, &base.task_id, &own);
    }
    let mut cascade = Cascade::new(&base, own, Timestamp::now());
    loop {
        let wanted = cascade.wanted();
        if wanted.is_empty() {
            break;
        }
        let read = wanted
            .iter()
            .map(|(step, id)| read_task(tx, step, id))
            .collect::<Result<Vec<_>, _>>()?;
        cascade.feed(&read);
    }
    if let Some(err) = cascade.overflow() {
        return Err(err);
    }
    let mut own_after = None;
    for (i, planned) in cascade.writes().iter().enumerate() {
        let step_meta = if i == 0 {
            meta.clone()
        } else {
            read_step(tx, &planned.step)?.ok_or_else(|| StoreError::Service {
                operation: "ending a task with dependents",
                message: format!(
                    "step {} of a dependent or escalated task does not exist; load it (or fix the step's retry rules)",
                    planned.step
                ),
            })?
        };
        let mut transition = planned.transition.clone();
        crate::transition::escalate::with_step_expiry(&mut transition, &step_meta.settings);
        let written = apply(tx, &step_meta, &planned.task_id, &transition)?;
        match written {
            Some(t) if i == 0 => own_after = Some(t),
            Some(_) => {}
            // Read in this transaction a moment ago: it cannot have changed.
            None => return Err(gone(planned)),
        }
    }
    Ok(own_after)
}

fn gone(planned: &deps::Planned) -> StoreError {
    StoreError::Corrupt {
        key: format!("{}/{}", planned.step, planned.task_id),
        detail: format!(
            "{} did not hold on the task read in the same transaction",
            planned.transition.name
        ),
    }
}

/// Inserts `tasks` (new, of `meta`, loaded after the steps `after`), each
/// started from its upstream tasks as stored and linked to them, in the
/// caller's transaction.
pub(super) fn insert_after_in(
    tx: &rusqlite::Transaction<'_>,
    meta: &StepMeta,
    tasks: &[Task],
    after: &[String],
) -> Result<InsertOutcome, StoreError> {
    let now = Timestamp::now();
    let mut metas = Vec::with_capacity(after.len());
    for step in after {
        metas.push((step.clone(), read_step(tx, step)?));
    }
    let mut out = InsertOutcome::default();
    for task in tasks {
        if let Some(old) = read_task(tx, &meta.step, &task.task_id)? {
            out.existing.push(old);
            continue;
        }
        let mut upstream = Vec::with_capacity(after.len());
        for (step, _) in &metas {
            upstream.push((step.clone(), read_task(tx, step, &task.task_id)?));
        }
        let mut task = task.clone();
        deps::start(&mut task, &upstream, now);
        apply(tx, meta, &task.task_id, &transition::insert(&task))?;
        out.inserted += 1;
        for ((_, up), (_, up_meta)) in upstream.iter().zip(&metas) {
            if let (Some(up), Some(up_meta)) = (up, up_meta)
                && let Some(link) = deps::link(up, &meta.step)
            {
                apply(tx, up_meta, &up.task_id, &link)?;
            }
        }
    }
    Ok(out)
}
