//! Creating the task table and checking that an existing one matches the
//! schema; creating and updating steps.

use std::collections::HashMap;

use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use aws_smithy_types::error::display::DisplayErrorContext;

use super::{DynamoStore, InitOutcome, n, s};
use crate::model::{LoadLock, LoadRecord, StepMeta};
use crate::schema::{self, BY_STATE_INDEX, BY_STATE_PROJECTED, STEPS_PK, attr};
use crate::store::{SettingsChange, StepChange, StoreError};

/// Table creation waits this long for the table to become active.
const CREATE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

impl DynamoStore {
    /// Writes a load record item of `step` (see [`crate::schema`]).
    pub(super) async fn put_load_record(
        &self,
        step: &str,
        record: &LoadRecord,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(record).expect("a load record always serialises");
        self.client
            .put_item()
            .table_name(&self.table)
            .item(attr::PK, s(&schema::loads_pk(step)))
            .item(attr::SK, s(&schema::load_sk(record.at, rand::random())))
            .item(attr::RECORD, s(&body))
            .send()
            .await
            .map_err(|e| self.classify("PutItem", &e))?;
        Ok(())
    }

    /// The newest `limit` load records of `step`: one query, newest first.
    pub(super) async fn load_records(
        &self,
        step: &str,
        limit: usize,
    ) -> Result<Vec<LoadRecord>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_values(":pk", s(&schema::loads_pk(step)))
            .scan_index_forward(false)
            .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| self.classify("Query", &e))?;
        out.items()
            .iter()
            .map(|item| {
                let text = match item.get(attr::RECORD) {
                    Some(AttributeValue::S(t)) => t.as_str(),
                    _ => "",
                };
                serde_json::from_str(text).map_err(|e| StoreError::Service {
                    operation: "Query",
                    message: format!("a load record of step '{step}' cannot be read: {e}"),
                })
            })
            .collect()
    }

    /// Creates the table with its index and TTL, and waits until it is
    /// active; on an existing table, checks that it matches.
    pub async fn init(&self) -> Result<InitOutcome, StoreError> {
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(vec![
                attr_def(attr::PK, ScalarAttributeType::S),
                attr_def(attr::SK, ScalarAttributeType::S),
                attr_def(attr::STATE_PK, ScalarAttributeType::S),
                attr_def(attr::STATE_AT, ScalarAttributeType::N),
            ]))
            .set_key_schema(Some(vec![
                key(attr::PK, KeyType::Hash),
                key(attr::SK, KeyType::Range),
            ]))
            .global_secondary_indexes(by_state_index())
            .send()
            .await;
        match created {
            Ok(_) => {
                self.client
                    .wait_until_table_exists()
                    .table_name(&self.table)
                    .wait(CREATE_WAIT)
                    .await
                    .map_err(|e| StoreError::Service {
                        operation: "waiting for the table to become active",
                        message: DisplayErrorContext(&e).to_string(),
                    })?;
                self.client
                    .update_time_to_live()
                    .table_name(&self.table)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .enabled(true)
                            .attribute_name(attr::EXPIRES_AT)
                            .build()
                            .expect("enabled and attribute name are set"),
                    )
                    .send()
                    .await
                    .map_err(|e| self.classify("UpdateTimeToLive", &e))?;
                Ok(InitOutcome::Created)
            }
            Err(e) if e.code() == Some("ResourceInUseException") => {
                self.check_table().await?;
                Ok(InitOutcome::AlreadyExists)
            }
            Err(e) => Err(self.classify("CreateTable", &e)),
        }
    }

    /// Checks that the table exists and has the schema's keys, index and
    /// TTL attribute; says what differs.
    pub async fn check_table(&self) -> Result<(), StoreError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.classify("DescribeTable", &e))?;
        let Some(desc) = out.table() else {
            return Err(StoreError::TableNotFound {
                table: self.table.clone(),
                endpoint: self.endpoint.clone(),
            });
        };
        let mut differences = schema_differences(desc);
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.classify("DescribeTimeToLive", &e))?;
        let ttl = ttl.time_to_live_description();
        let ttl_on = matches!(
            ttl.and_then(|t| t.time_to_live_status()),
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        );
        if !ttl_on || ttl.and_then(|t| t.attribute_name()) != Some(attr::EXPIRES_AT) {
            differences.push(format!(
                "time to live is not enabled on '{}'",
                attr::EXPIRES_AT
            ));
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(StoreError::SchemaMismatch {
                table: self.table.clone(),
                differences,
            })
        }
    }

    /// Creates the step, or applies `change` to it.
    pub(super) async fn ensure_step_item(
        &self,
        step: &str,
        change: &SettingsChange,
        lock: Option<&LoadLock>,
    ) -> Result<(StepMeta, StepChange), StoreError> {
        loop {
            if let Some(meta) = self.read_step(step).await? {
                let Some(updated) = change.update_step(&meta)? else {
                    return Ok((meta, StepChange::Unchanged));
                };
                // An empty list is never stored: `after` is removed instead.
                let (expression, after) = if updated.after.is_empty() {
                    (
                        "SET #settings = :settings, #updated = :updated REMOVE #after",
                        None,
                    )
                } else {
                    (
                        "SET #settings = :settings, #updated = :updated, #after = :after",
                        Some(
                            serde_dynamo::to_attribute_value(&updated.after)
                                .expect("step names serialise"),
                        ),
                    )
                };
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .key(attr::PK, s(STEPS_PK))
                    .key(attr::SK, s(step))
                    .update_expression(expression)
                    .expression_attribute_names("#settings", attr::SETTINGS)
                    .expression_attribute_names("#updated", attr::UPDATED_AT)
                    .expression_attribute_names("#after", attr::AFTER)
                    .set_expression_attribute_values(
                        after.map(|a| std::collections::HashMap::from([(":after".to_owned(), a)])),
                    )
                    .expression_attribute_values(
                        ":settings",
                        serde_dynamo::to_attribute_value(&updated.settings)
                            .expect("settings serialise"),
                    )
                    .expression_attribute_values(":updated", n(updated.updated_at.as_millis()))
                    .send()
                    .await
                    .map_err(|e| self.classify("UpdateItem", &e))?;
                return Ok((updated, StepChange::Updated));
            }
            let mut meta = change.new_step(step);
            meta.first_load = lock.cloned();
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(Self::step_item(&meta)))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", attr::PK)
                .send()
                .await;
            match put {
                Ok(_) => return Ok((meta, StepChange::Created)),
                // Another loader created the step first: read theirs.
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => {}
                Err(e) => return Err(self.classify("PutItem", &e)),
            }
        }
    }
}

/// index.
fn schema_differences(desc: &aws_sdk_dynamodb::types::TableDescription) -> Vec<String> {
    let mut differences = Vec::new();
    let keys = |schema: &[KeySchemaElement]| {
        schema
            .iter()
            .map(|k| format!("{} ({})", k.attribute_name(), k.key_type().as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let want_keys = format!("{} (HASH), {} (RANGE)", attr::PK, attr::SK);
    let have_keys = keys(desc.key_schema());
    if have_keys != want_keys {
        differences.push(format!(
            "key schema is [{have_keys}], expected [{want_keys}]"
        ));
    }
    match desc
        .global_secondary_indexes()
        .iter()
        .find(|g| g.index_name() == Some(BY_STATE_INDEX))
    {
        None => differences.push(format!("index '{BY_STATE_INDEX}' is missing")),
        Some(g) => {
            let want = format!("{} (HASH), {} (RANGE)", attr::STATE_PK, attr::STATE_AT);
            let have = keys(g.key_schema());
            if have != want {
                differences.push(format!(
                    "index '{BY_STATE_INDEX}' has keys [{have}], expected [{want}]"
                ));
            }
            let projected: Vec<&str> = g
                .projection()
                .map(|p| p.non_key_attributes().iter().map(String::as_str).collect())
                .unwrap_or_default();
            let is_all =
                g.projection().and_then(|p| p.projection_type()) == Some(&ProjectionType::All);
            let missing: Vec<&str> = BY_STATE_PROJECTED
                .iter()
                .copied()
                .filter(|a| !projected.contains(a))
                .collect();
            if !is_all && !missing.is_empty() {
                differences.push(format!(
                    "index '{BY_STATE_INDEX}' does not project {}",
                    missing.join(", ")
                ));
            }
        }
    }
    let key_types: HashMap<&str, &str> = desc
        .attribute_definitions()
        .iter()
        .map(|d| (d.attribute_name(), d.attribute_type().as_str()))
        .collect();
    for (name, ty) in [
        (attr::PK, "S"),
        (attr::SK, "S"),
        (attr::STATE_PK, "S"),
        (attr::STATE_AT, "N"),
    ] {
        if let Some(have) = key_types.get(name)
            && *have != ty
        {
            differences.push(format!("attribute '{name}' has type {have}, expected {ty}"));
        }
    }
    differences
}

fn attr_def(name: &str, ty: ScalarAttributeType) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ty)
        .build()
        .expect("name and type are set")
}

fn key(name: &str, ty: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(ty)
        .build()
        .expect("name and type are set")
}

fn by_state_index() -> GlobalSecondaryIndex {
    GlobalSecondaryIndex::builder()
        .index_name(BY_STATE_INDEX)
        .key_schema(key(attr::STATE_PK, KeyType::Hash))
        .key_schema(key(attr::STATE_AT, KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .set_non_key_attributes(Some(
                    BY_STATE_PROJECTED.iter().map(|a| (*a).to_owned()).collect(),
                ))
                .build(),
        )
        .build()
        .expect("name, keys and projection are set")
}
