//! The EC2 fleet from the command line: `template apply`, `launch`
//! (without `--local`), and the EC2 half of `fleet` and `stop`.
//!
//! Guarantees: a step's template is always found through the one naming
//! rule (`--template-name`); nothing is launched before the step, its
//! template and the cap are known, and `--dry-run` sends no request that
//! changes anything; a stop without `--now` only tags the instances to
//! drain (their agents stop claiming, finish within grace, release and
//! terminate), it never terminates one.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::Serialize;
use taskfleet::connect::{Locator, table_name};
use taskfleet::fleet::instances::{self, ACTIVE_STATES, FleetInstance, LIVE_STATES};
use taskfleet::fleet::launch::{self, Bounds, LaunchRequest, Spot};
use taskfleet::fleet::template::{self, ApplyOutcome, TemplateDirs, Variables};
use taskfleet::fleet::{FleetError, TemplateNaming};
use taskfleet::store::{Store, TaskStore};
use taskfleet::time::Timestamp;

use crate::cli::{GlobalArgs, LaunchArgs, StopArgs, TemplateApplyArgs};
use crate::connect;

/// `taskctl template apply`.
pub async fn template_apply(global: &GlobalArgs, args: &TemplateApplyArgs) -> Result<()> {
    let naming = TemplateNaming::new(&global.template_name)?;
    let dirs = TemplateDirs {
        templates: args.templates_dir.clone(),
        userdata: args.userdata_dir.clone(),
    };
    let vars = Variables {
        given: args.vars.iter().cloned().collect(),
        environment: std::env::vars().collect(),
    };
    let steps = match &args.step {
        Some(step) => vec![step.clone()],
        None => dirs.steps()?,
    };
    if steps.is_empty() {
        bail!(
            "there are no launch template files (STEP.json) in {}; write one, or give --templates-dir",
            dirs.templates.display()
        );
    }
    // Every file is read and checked before anything is sent: one bad file
    // changes no template.
    let rendered = steps
        .iter()
        .map(|step| template::render(&dirs, step, &naming, &vars))
        .collect::<Result<Vec<_>, FleetError>>()?;
    let client = connect::ec2(global).await?;
    let mut outcomes = Vec::new();
    for r in &rendered {
        let outcome = template::apply(&client, r, args.dry_run).await?;
        if !args.json {
            println!("{}", apply_text(&outcome, r, args.dry_run));
        }
        outcomes.push(outcome);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    }
    Ok(())
}

fn apply_text(outcome: &ApplyOutcome, r: &template::Rendered, dry_run: bool) -> String {
    let file = r.path.display();
    match (outcome, dry_run) {
        (ApplyOutcome::Created { template }, false) => {
            format!("created launch template '{template}' (version 1) from {file}")
        }
        (ApplyOutcome::Created { template }, true) => {
            format!("would create launch template '{template}' (version 1) from {file}")
        }
        (
            ApplyOutcome::NewVersion {
                template,
                version,
                previous,
            },
            false,
        ) => format!(
            "added version {version} to launch template '{template}' and made it the default (was {previous}): {file} changed"
        ),
        (
            ApplyOutcome::NewVersion {
                template,
                version,
                previous,
            },
            true,
        ) => format!(
            "would add version {version} to launch template '{template}' and make it the default (now {previous}): {file} changed"
        ),
        (ApplyOutcome::Unchanged { template, version }, _) => format!(
            "launch template '{template}' is up to date (default version {version} matches {file})"
        ),
    }
}

/// The DynamoDB table `global` names; EC2 workers cannot use a file.
fn dynamo_table(global: &GlobalArgs) -> Result<Option<String>> {
    match Locator::parse(&global.table).map_err(anyhow::Error::msg)? {
        Locator::Dynamo(_) => Ok(Some(table_name(&global.table).map_err(anyhow::Error::msg)?)),
        Locator::Sqlite(_) => Ok(None),
    }
}

/// What `launch --json` prints.
#[derive(Debug, Serialize)]
struct LaunchRecord {
    table: String,
    step: String,
    template: String,
    template_version: String,
    launch_id: String,
    dry_run: bool,
    requested: u32,
    count: u32,
    reasons: Vec<String>,
    spot: bool,
    instances: Vec<String>,
}

/// `taskctl launch` on EC2.
pub async fn launch(global: &GlobalArgs, store: &Store, args: &LaunchArgs) -> Result<()> {
    if !args.pass_env.is_empty() {
        bail!(
            "--pass-env is for local workers (--local); an EC2 worker's scripts get what its bootstrap gives them"
        );
    }
    let Some(table) = dynamo_table(global)? else {
        bail!(
            "EC2 workers need a DynamoDB table (--table dynamodb://NAME); the embedded store {} serves only local workers (--local)",
            global.table
        );
    };
    let template = TemplateNaming::new(&global.template_name)?.name(&args.step)?;
    let Some(status) = store.status(Some(&args.step)).await?.into_iter().next() else {
        bail!(
            "step '{}' does not exist in {}; load it first with `taskctl load --step {} ...`",
            args.step,
            store.describe(),
            args.step
        );
    };
    let client = connect::ec2(global).await?;
    let Some(versions) = template::describe(&client, &template).await? else {
        return Err(FleetError::TemplateNotFound {
            template,
            step: args.step.clone(),
        }
        .into());
    };
    // The version number itself, so that the instances' tags (and every
    // attempt's provenance) name what they were started from.
    let template_version = match args.template_version.as_str() {
        "$Default" => versions.default_version.to_string(),
        "$Latest" => versions.latest_version.to_string(),
        v => v.to_owned(),
    };
    let active = instances::list(&client, &table, Some(&args.step), ACTIVE_STATES).await?;
    let requested = u32::try_from(args.count).unwrap_or(u32::MAX);
    let slots = u32::try_from(args.slots).unwrap_or(u32::MAX).max(1);
    let plan = launch::plan(&Bounds {
        requested,
        claimable: status.pending,
        slots,
        max_instances: args.max_instances,
        active: u32::try_from(active.len()).unwrap_or(u32::MAX),
    });
    let request = LaunchRequest {
        table: table.clone(),
        step: args.step.clone(),
        template: template.clone(),
        template_version: template_version.clone(),
        count: plan.count,
        launch_id: args.launch_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{:08x}",
                taskfleet::time::Timestamp::now().as_millis(),
                rand::random::<u32>()
            )
        }),
        slots,
        spot: args.spot.then(|| Spot {
            max_price: args.max_price.clone(),
        }),
        instance_type: args.instance_type.clone(),
        subnet: args.subnet.clone(),
        security_groups: args.security_group.clone(),
        first_place: launch::next_place(&active),
    };
    let instances = if plan.count == 0 || args.dry_run {
        Vec::new()
    } else {
        launch::run_instances(&client, &request).await?
    };
    if args.json {
        let record = LaunchRecord {
            table,
            step: args.step.clone(),
            template,
            template_version,
            launch_id: request.launch_id.clone(),
            dry_run: args.dry_run,
            requested,
            count: plan.count,
            reasons: plan.reasons,
            spot: args.spot,
            instances,
        };
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(());
    }
    print_launch(args, &request, &plan, &instances);
    Ok(())
}

/// The human report of a launch.
fn print_launch(
    args: &LaunchArgs,
    request: &LaunchRequest,
    plan: &launch::Plan,
    instances: &[String],
) {
    let requested = args.count;
    let why = if plan.reasons.is_empty() {
        String::new()
    } else {
        format!(
            " (asked for {requested}, capped at {}: {})",
            plan.count,
            plan.reasons.join("; ")
        )
    };
    let what = format!(
        "{} {} instance{} of step '{}' from launch template '{}' ({}{})",
        if args.spot { "spot" } else { "on-demand" },
        plan.count,
        if plan.count == 1 { "" } else { "s" },
        args.step,
        request.template,
        args.template_version,
        if args.spot {
            args.max_price
                .as_ref()
                .map(|p| format!(", max price {p}"))
                .unwrap_or_default()
        } else {
            String::new()
        },
    );
    if plan.count == 0 {
        println!("launched nothing for step '{}'{why}", args.step);
    } else if args.dry_run {
        println!(
            "would launch {what}, launch id {}{why}; nothing was launched (--dry-run)",
            request.launch_id
        );
    } else {
        println!("launched {what}, launch id {}{why}:", request.launch_id);
        for id in instances {
            println!("{id}");
        }
    }
}

/// One EC2 row of `taskctl fleet`.
#[derive(Debug, Serialize)]
pub struct InstanceRow {
    /// Always "ec2".
    pub kind: &'static str,
    /// The instance.
    #[serde(flatten)]
    pub instance: FleetInstance,
    /// Seconds since launch.
    pub age_seconds: Option<i64>,
    /// Tasks its workers hold now (from the running tasks' owners).
    pub tasks: Vec<String>,
    /// Seconds since its agent last renewed a lease (the newest of its
    /// tasks' renewals; none when it holds no task).
    pub last_heartbeat_seconds: Option<i64>,
}

/// The EC2 instances of the table's steps, with the tasks each runs; `None`
/// for the embedded store, which has no EC2 fleet.
pub async fn fleet_rows(
    global: &GlobalArgs,
    store: &Store,
    step: Option<&str>,
) -> Result<Option<Vec<InstanceRow>>> {
    let Some(table) = dynamo_table(global)? else {
        return Ok(None);
    };
    let client = connect::ec2(global).await?;
    let found = instances::list(&client, &table, step, LIVE_STATES).await?;
    // Owners are `host/worker`; on EC2 the host is the instance id.
    let mut owners: BTreeMap<String, (Vec<String>, Option<Timestamp>)> = BTreeMap::new();
    let mut steps: Vec<&str> = found.iter().map(|i| i.step.as_str()).collect();
    steps.sort_unstable();
    steps.dedup();
    for s in steps {
        if let Some(meta) = store.step(s).await? {
            for running in store.running(&meta).await? {
                let host = running
                    .owner
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                // A lease is renewed to a full lease from the renewal.
                let lease = i64::try_from(meta.settings.lease.as_millis()).unwrap_or(i64::MAX);
                let renewed = Timestamp::from_millis(
                    running.lease_expires_at.as_millis().saturating_sub(lease),
                );
                let entry = owners.entry(host).or_default();
                entry.0.push(running.task_id);
                entry.1 = entry.1.max(Some(renewed));
            }
        }
    }
    let now = Timestamp::now();
    let seconds = now.as_millis() / 1000;
    Ok(Some(
        found
            .into_iter()
            .map(|instance| {
                let (tasks, renewed) = owners.remove(&instance.instance_id).unwrap_or_default();
                InstanceRow {
                    kind: "ec2",
                    age_seconds: instance.launched_at.map(|t| (seconds - t).max(0)),
                    tasks,
                    last_heartbeat_seconds: renewed
                        .map(|t| ((now.as_millis() - t.as_millis()) / 1000).max(0)),
                    instance,
                }
            })
            .collect(),
    ))
}

/// The EC2 table of `taskctl fleet`.
pub fn print_instances(rows: &[InstanceRow]) {
    println!(
        "{:<20}  {:<16}  {:<12}  {:<9}  {:<13}  {:>8}  {:>9}  TASKS",
        "INSTANCE", "STEP", "TYPE", "MARKET", "STATE", "AGE", "HEARTBEAT"
    );
    for r in rows {
        let i = &r.instance;
        println!(
            "{:<20}  {:<16}  {:<12}  {:<9}  {:<13}  {:>8}  {:>9}  {}",
            i.instance_id,
            i.step,
            i.instance_type,
            if i.spot { "spot" } else { "on-demand" },
            i.state,
            r.age_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{s}s")),
            r.last_heartbeat_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{s}s ago")),
            if r.tasks.is_empty() {
                "-".to_owned()
            } else {
                r.tasks.join(", ")
            }
        );
    }
}

/// The EC2 half of `taskctl stop`.
pub async fn stop(global: &GlobalArgs, args: &StopArgs) -> Result<()> {
    let Some(table) = dynamo_table(global)? else {
        return Ok(());
    };
    let client = connect::ec2(global).await?;
    let found = instances::list(&client, &table, Some(&args.step), LIVE_STATES).await?;
    if found.is_empty() {
        if args.now {
            println!("step '{}' has no EC2 instances to terminate", args.step);
        }
        return Ok(());
    }
    let ids: Vec<String> = found.into_iter().map(|i| i.instance_id).collect();
    let n = ids.len();
    let s = if n == 1 { "" } else { "s" };
    if args.now {
        instances::terminate(&client, &ids).await?;
        println!(
            "terminated {n} EC2 instance{s} of step '{}' ({}); the tasks they were running go back to other workers once their leases run out",
            args.step,
            ids.join(", ")
        );
    } else {
        instances::drain(&client, &ids).await?;
        println!(
            "draining {n} EC2 instance{s} of step '{}' ({}): their agents claim nothing more, let running tasks finish within their grace period, release the rest and terminate their instances; `taskctl stop --step {} --now` terminates them at once",
            args.step,
            ids.join(", "),
            args.step
        );
    }
    Ok(())
}
