//! Rendering a [`Transition`] as DynamoDB expressions: its guard as a
//! condition expression, its changes (plus the `by_state` index keys) as an
//! update expression, its counter deltas as counter updates.
//!
//! Attribute names always go through `#placeholders` and values through
//! `:placeholders`, so no name or value is ever pasted into an expression.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};

use super::{Item, n, s, task_item};
use crate::model::StepMeta;
use crate::schema::{self, STEPS_PK, attr};
use crate::transition::{Change, Cond, Transition, Write};

/// An update and condition expression under construction, with their
/// placeholders.
#[derive(Debug, Default)]
pub(super) struct Expr {
    pub names: HashMap<String, String>,
    pub values: HashMap<String, AttributeValue>,
    sets: Vec<String>,
    adds: Vec<String>,
    removes: Vec<String>,
    conditions: Vec<String>,
}

impl Expr {
    fn name(&mut self, attr: &str) -> String {
        let placeholder = format!("#{attr}");
        self.names.insert(placeholder.clone(), attr.to_owned());
        placeholder
    }

    fn value(&mut self, v: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), v);
        placeholder
    }

    fn set(&mut self, attr: &str, v: AttributeValue) {
        let (name, value) = (self.name(attr), self.value(v));
        self.sets.push(format!("{name} = {value}"));
    }

    fn condition(&mut self, cond: &Cond) {
        let text = match cond {
            Cond::Absent => format!("attribute_not_exists({})", self.name(attr::PK)),
            Cond::CancelNotAsked => {
                format!("attribute_not_exists({})", self.name(attr::CANCELLED_BY))
            }
            Cond::CancelAsked => format!("attribute_exists({})", self.name(attr::CANCELLED_BY)),
            Cond::State(state) => {
                let (a, v) = (self.name(attr::STATE), self.value(s(state.as_str())));
                format!("{a} = {v}")
            }
            Cond::Dependents(list) => self.list_is(attr::DEPENDENTS, list),
            Cond::WaitingOn(list) => self.list_is(attr::WAITING_ON, list),
            Cond::Attempt(attempt) => {
                let (a, v) = (self.name(attr::ATTEMPT), self.value(n(i64::from(*attempt))));
                format!("{a} = {v}")
            }
            Cond::Owner(owner) => {
                let (a, v) = (self.name(attr::OWNER), self.value(s(owner)));
                format!("{a} = {v}")
            }
            Cond::ReadyBy(at) => {
                let (a, v) = (self.name(attr::READY_AT), self.value(n(at.as_millis())));
                format!("(attribute_not_exists({a}) OR {a} <= {v})")
            }
            Cond::LeaseExpiredBefore(at) => {
                let (a, v) = (
                    self.name(attr::LEASE_EXPIRES_AT),
                    self.value(n(at.as_millis())),
                );
                format!("{a} < {v}")
            }
        };
        self.conditions.push(text);
    }

    /// "The list attribute is exactly `list`"; an empty list is never
    /// stored (the attribute is removed instead).
    fn list_is(&mut self, attr: &str, list: &[String]) -> String {
        let a = self.name(attr);
        if list.is_empty() {
            return format!("attribute_not_exists({a})");
        }
        let v = self.value(AttributeValue::L(list.iter().map(|x| s(x)).collect()));
        format!("{a} = {v}")
    }

    /// The update expression.
    pub fn update_expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.sets.is_empty() {
            parts.push(format!("SET {}", self.sets.join(", ")));
        }
        if !self.adds.is_empty() {
            parts.push(format!("ADD {}", self.adds.join(", ")));
        }
        if !self.removes.is_empty() {
            parts.push(format!("REMOVE {}", self.removes.join(", ")));
        }
        parts.join(" ")
    }

    /// The condition expression (the guard's conditions, all of them).
    pub fn condition_expression(&self) -> String {
        self.conditions.join(" AND ")
    }
}

/// A JSON value of the task model as an attribute value.
fn attribute(v: &serde_json::Value) -> AttributeValue {
    serde_dynamo::to_attribute_value(v).expect("JSON values convert")
}

/// The guard, changes and index keys of `t` on task `task_id` of `meta`.
/// `t` must be an update ([`Write::Update`]).
pub(super) fn render_update(meta: &StepMeta, task_id: &str, t: &Transition) -> Expr {
    let Write::Update(changes) = &t.write else {
        panic!("{} writes a whole item, not an update", t.name)
    };
    let shard = schema::shard_of(task_id, meta.shards);
    let mut e = Expr::default();
    for cond in &t.guard {
        e.condition(cond);
    }
    let mut touched: Vec<&str> = Vec::new();
    for change in changes {
        let name = match change {
            Change::Set(name, v) => {
                e.set(name, attribute(v));
                name
            }
            Change::Add(name, by) => {
                let (a, v) = (e.name(name), e.value(n(*by)));
                e.adds.push(format!("{a} {v}"));
                name
            }
            Change::Remove(name) => {
                let a = e.name(name);
                e.removes.push(a);
                name
            }
        };
        debug_assert!(!touched.contains(name), "{} changes {name} twice", t.name);
        touched.push(name);
    }
    // A transition that keeps the task's state keeps its index place.
    if let Some(at) = t.state_at {
        e.set(
            attr::STATE_PK,
            s(&schema::state_pk(&meta.step, t.to, shard)),
        );
        e.set(attr::STATE_AT, n(at.as_millis()));
    }
    e
}

/// `t` as one `Update` of a transaction.
pub(super) fn update_in_transaction(
    table: &str,
    meta: &StepMeta,
    task_id: &str,
    t: &Transition,
) -> Update {
    let e = render_update(meta, task_id, t);
    Update::builder()
        .table_name(table)
        .set_key(Some(schema::task_key(&meta.step, meta.shards, task_id)))
        .update_expression(e.update_expression())
        .condition_expression(e.condition_expression())
        .set_expression_attribute_names(Some(e.names))
        .set_expression_attribute_values(Some(e.values))
        .build()
        .expect("table, key and expression are set")
}

/// `t` (a [`Write::Put`]) as one conditional `Put` of a transaction; a
/// failed condition returns the stored item.
pub(super) fn put_in_transaction(table: &str, meta: &StepMeta, t: &Transition) -> Put {
    let Write::Put(task) = &t.write else {
        panic!("{} is an update, not a whole item", t.name)
    };
    let mut e = Expr::default();
    for cond in &t.guard {
        e.condition(cond);
    }
    let item: Item = task_item(
        meta,
        task,
        t.state_at.expect("a whole item has its index place"),
    );
    Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(e.condition_expression())
        .set_expression_attribute_names(Some(e.names))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .expect("table and item are set")
}

/// A check, in a transaction, that task `task_id` of `meta` still meets
/// `guard` (nothing is written on it).
pub(super) fn check_in_transaction(
    table: &str,
    meta: &StepMeta,
    task_id: &str,
    guard: &[Cond],
) -> ConditionCheck {
    let mut e = Expr::default();
    for cond in guard {
        e.condition(cond);
    }
    ConditionCheck::builder()
        .table_name(table)
        .set_key(Some(schema::task_key(&meta.step, meta.shards, task_id)))
        .condition_expression(e.condition_expression())
        .set_expression_attribute_names(Some(e.names))
        .set_expression_attribute_values((!e.values.is_empty()).then_some(e.values))
        .build()
        .expect("table, key and condition are set")
}

/// A check, in a transaction, that step `meta` is still the one read: not
/// deleted and made again (its creation time), its settings not changed
/// (their time). A write that put tasks where `meta` says they are, or
/// read them there, holds only with it.
pub(super) fn step_unchanged(table: &str, meta: &StepMeta) -> ConditionCheck {
    let time = |t: crate::time::Timestamp| n(t.as_millis());
    ConditionCheck::builder()
        .table_name(table)
        .key(attr::PK, s(STEPS_PK))
        .key(attr::SK, s(&meta.step))
        .condition_expression("#created = :created AND #updated = :updated")
        .expression_attribute_names("#created", attr::CREATED_AT)
        .expression_attribute_names("#updated", attr::UPDATED_AT)
        .expression_attribute_values(":created", time(meta.created_at))
        .expression_attribute_values(":updated", time(meta.updated_at))
        .build()
        .expect("table, key and condition are set")
}

/// A check, in a transaction, that there is still no step `step`: a write
/// that found none (and so none of its tasks) holds only with it.
pub(super) fn step_absent(table: &str, step: &str) -> ConditionCheck {
    ConditionCheck::builder()
        .table_name(table)
        .key(attr::PK, s(STEPS_PK))
        .key(attr::SK, s(step))
        .condition_expression("attribute_not_exists(#pk)")
        .expression_attribute_names("#pk", attr::PK)
        .build()
        .expect("table, key and condition are set")
}

/// `t` (a [`Write::Delete`]) on task `task_id` of `meta` as one
/// conditional `Delete` of a transaction.
pub(super) fn delete_in_transaction(
    table: &str,
    meta: &StepMeta,
    task_id: &str,
    t: &Transition,
) -> Delete {
    assert!(matches!(t.write, Write::Delete), "{} is no delete", t.name);
    let mut e = Expr::default();
    for cond in &t.guard {
        e.condition(cond);
    }
    Delete::builder()
        .table_name(table)
        .set_key(Some(schema::task_key(&meta.step, meta.shards, task_id)))
        .condition_expression(e.condition_expression())
        .set_expression_attribute_names(Some(e.names))
        .set_expression_attribute_values((!e.values.is_empty()).then_some(e.values))
        .build()
        .expect("table, key and condition are set")
}

/// A counter attribute: one of [`attr`]'s, or an expiry counter
/// ([`schema::expiring_attr`]).
pub(super) type Counter = std::borrow::Cow<'static, str>;

/// Every counter delta of `t`, its expiry counter's too.
pub(super) fn deltas_of(t: &Transition) -> Vec<(Counter, i64)> {
    t.counters
        .iter()
        .map(|(c, by)| (Counter::Borrowed(*c), *by))
        .chain(
            t.expiring
                .map(|(at, by)| (Counter::Owned(schema::expiring_attr(at)), by)),
        )
        .collect()
}

/// The counter update of one shard: every delta in one `ADD`.
pub(super) fn counter_update(
    table: &str,
    step: &str,
    shard: u16,
    deltas: &[(Counter, i64)],
) -> Update {
    let mut e = Expr::default();
    for (counter, by) in deltas {
        let (a, v) = (e.name(counter), e.value(n(*by)));
        e.adds.push(format!("{a} {v}"));
    }
    Update::builder()
        .table_name(table)
        .key(attr::PK, s(&schema::counts_pk(step)))
        .key(attr::SK, s(&schema::shard_sk(shard)))
        .update_expression(e.update_expression())
        .set_expression_attribute_names(Some(e.names))
        .set_expression_attribute_values(Some(e.values))
        .build()
        .expect("table, key and expression are set")
}

/// [`counter_update`] as one item of a transaction.
pub(super) fn counter_item(
    table: &str,
    step: &str,
    shard: u16,
    deltas: &[(Counter, i64)],
) -> TransactWriteItem {
    TransactWriteItem::builder()
        .update(counter_update(table, step, shard, deltas))
        .build()
}

/// Sums counter deltas per counter, dropping those that cancel out.
pub(super) fn sum_deltas(deltas: impl IntoIterator<Item = (Counter, i64)>) -> Vec<(Counter, i64)> {
    let mut out: Vec<(Counter, i64)> = Vec::new();
    for (counter, by) in deltas {
        match out.iter_mut().find(|(c, _)| *c == counter) {
            Some((_, total)) => *total += by,
            None => out.push((counter, by)),
        }
    }
    out.retain(|(_, by)| *by != 0);
    out
}

/// A projection expression of `attributes` and its attribute names
/// (`#p0, #p1, ...`): every attribute through a name, reserved words
/// included.
pub(super) fn projection(
    attributes: &[&str],
) -> (String, std::collections::HashMap<String, String>) {
    let mut names = std::collections::HashMap::new();
    let expression = attributes
        .iter()
        .enumerate()
        .map(|(n, a)| {
            names.insert(format!("#p{n}"), (*a).to_owned());
            format!("#p{n}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    (expression, names)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::StepSettings;
    use crate::time::Timestamp;
    use crate::transition;

    fn meta() -> StepMeta {
        StepMeta {
            step: "align".into(),
            shards: 16,
            settings: StepSettings::default(),
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            first_load: None,
            after: Vec::new(),
        }
    }

    #[test]
    fn a_claim_renders_its_guard_and_index_keys() {
        let t = transition::claim("w", Timestamp::from_millis(1000), Duration::from_secs(60));
        let e = render_update(&meta(), "A", &t);
        let cond = e.condition_expression();
        assert!(
            cond.starts_with(
                "#state = :v0 AND (attribute_not_exists(#ready_at) OR #ready_at <= :v1)"
            ),
            "{cond}"
        );
        let update = e.update_expression();
        assert!(update.contains("ADD #attempt"), "{update}");
        assert!(update.contains("#state_pk = "), "{update}");
        let spk = schema::state_pk(
            "align",
            crate::model::TaskState::Running,
            schema::shard_of("A", 16),
        );
        assert!(e.values.values().any(|v| v.as_s().is_ok_and(|s| *s == spk)));
    }

    #[test]
    fn counter_deltas_are_summed_per_counter() {
        assert_eq!(
            sum_deltas([
                (Counter::Borrowed(attr::LOADED), 1),
                (Counter::Borrowed(attr::LOADED), 1),
                (Counter::Borrowed(attr::DONE), 1),
                (Counter::Borrowed(attr::DONE), -1),
                (Counter::Owned(schema::expiring_attr(60)), 1),
                (Counter::Owned(schema::expiring_attr(60)), 1),
            ]),
            vec![
                (Counter::Borrowed(attr::LOADED), 2),
                (Counter::Owned("expiring_60".to_owned()), 2)
            ]
        );
    }
}
