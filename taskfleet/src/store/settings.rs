//! What a load asks to change of a step's settings.

use super::StoreError;
use crate::model::{StepMeta, StepSettings};
use crate::time::Timestamp;

/// Changes to a step's settings asked for at load time; `None` keeps the
/// stored value (or the default for a new step).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsChange {
    /// New attempt limit.
    pub max_attempts: Option<u32>,
    /// New lease length.
    pub lease: Option<std::time::Duration>,
    /// New timeout.
    pub timeout: Option<std::time::Duration>,
    /// Shard count of a new step.
    pub shards: Option<u16>,
    /// Whether attempts' output tails are kept on the tasks.
    pub output_tail: Option<bool>,
    /// The steps the step's tasks wait for (`load --after`).
    pub after: Option<Vec<String>>,
    /// The step's retry rules, all of them (`load --retry-on`,
    /// `--fail-on`).
    pub rules: Option<Vec<crate::rules::Rule>>,
    /// How long done tasks are kept (`load --expire-after`); zero turns
    /// expiry off.
    pub expire_after: Option<std::time::Duration>,
}

impl SettingsChange {
    /// The step a first load with these settings creates.
    pub fn new_step(&self, step: &str) -> StepMeta {
        let now = Timestamp::now();
        StepMeta {
            step: step.to_owned(),
            shards: self.shards.unwrap_or(crate::schema::DEFAULT_SHARDS),
            settings: self.apply(&StepSettings::default()),
            created_at: now,
            updated_at: now,
            first_load: None,
            after: self.after.clone().unwrap_or_default(),
        }
    }

    /// `meta` with the asked-for settings, or `None` when nothing changes.
    /// The shard count of an existing step cannot change.
    pub fn update_step(&self, meta: &StepMeta) -> Result<Option<StepMeta>, StoreError> {
        if let Some(requested) = self.shards
            && requested != meta.shards
        {
            return Err(StoreError::ShardsFixed {
                step: meta.step.clone(),
                existing: meta.shards,
                requested,
            });
        }
        let settings = self.apply(&meta.settings);
        let after = self.after.clone().unwrap_or_else(|| meta.after.clone());
        if settings == meta.settings && after == meta.after {
            return Ok(None);
        }
        Ok(Some(StepMeta {
            settings,
            after,
            updated_at: Timestamp::now(),
            ..meta.clone()
        }))
    }

    /// `base` with the asked-for changes applied.
    pub fn apply(&self, base: &StepSettings) -> StepSettings {
        StepSettings {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            lease: self.lease.unwrap_or(base.lease),
            timeout: self.timeout.or(base.timeout),
            output_tail: self.output_tail.unwrap_or(base.output_tail),
            rules: self.rules.clone().unwrap_or_else(|| base.rules.clone()),
            expire_after: match self.expire_after {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => base.expire_after,
            },
        }
    }
}
