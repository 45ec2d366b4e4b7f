//! One function per subcommand. Each validates its input before it touches
//! the store and prints its own output: human text by default, JSON with
//! `--json`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use taskfleet::load::{self, LoadRequest};
use taskfleet::model::{FailedTask, StepStatus};
use taskfleet::rules::Rule;
use taskfleet::sheet::{Format, Sheet, SheetInput, SheetOptions};
use taskfleet::store::dynamo::InitOutcome;
use taskfleet::store::{SettingsChange, Store, TaskStore};

use crate::cli::{
    AgentCommand, Cli, Command, FleetArgs, LoadArgs, RecountArgs, SheetFormat, StatusArgs,
    TemplateCommand,
};
use crate::{connect, provenance};

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init => init(&cli.global).await,
        Command::Load(args) => load(&cli.global, args).await,
        Command::Status(args) => status(&cli.global, &args).await,
        Command::Show(args) => crate::show::show(&cli.global, &args).await,
        Command::Logs(args) => crate::logs::logs(&cli.global, &args).await,
        Command::Retry(args) => crate::retry::retry(&cli.global, &args).await,
        Command::Where(args) => crate::browse::where_is(&cli.global, &args).await,
        Command::Export(args) => crate::browse::export(&cli.global, &args).await,
        Command::Prune(args) => crate::prune::prune(&cli.global, &args).await,
        Command::Cancel(args) => crate::cancel::cancel(&cli.global, &args).await,
        Command::DeleteStep(args) => crate::prune::delete_step(&cli.global, &args).await,
        Command::Recount(args) => recount(&cli.global, &args).await,
        Command::Launch(args) => {
            let store = connect::open(&cli.global).await?;
            if args.local {
                crate::local::launch(&cli.global, &store, &args).await
            } else {
                crate::ec2::launch(&cli.global, &store, &args).await
            }
        }
        Command::Fleet(args) => fleet(&cli.global, &args).await,
        Command::Template(TemplateCommand::Apply(args)) => {
            crate::ec2::template_apply(&cli.global, &args).await
        }
        Command::Agent(AgentCommand::Publish(args)) => {
            crate::publish::publish(&cli.global, &args).await
        }
        Command::Stop(args) => {
            crate::ec2::stop(&cli.global, &args).await?;
            crate::local::stop(&cli.global, &args)
        }
    }
}

/// `taskctl fleet`: EC2 instances (for a DynamoDB table), then local
/// workers.
async fn fleet(global: &crate::cli::GlobalArgs, args: &FleetArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let step = args.step.as_deref();
    // The EC2 listing is one part of the picture: without EC2 access the
    // local workers are still worth showing.
    let ec2 = match crate::ec2::fleet_rows(global, &store, step).await {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("warning: cannot list the EC2 instances: {e:#}");
            None
        }
    };
    let local = crate::local::fleet_rows(global, &store, step).await?;
    if args.json {
        let mut all: Vec<serde_json::Value> = Vec::new();
        for row in ec2.iter().flatten() {
            all.push(serde_json::to_value(row)?);
        }
        for row in &local {
            all.push(serde_json::to_value(row)?);
        }
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let Some(ec2) = ec2 else {
        if local.is_empty() {
            println!(
                "no local workers; start some with `taskctl launch --local --step STEP --count N`"
            );
        } else {
            crate::local::print_rows(&local);
        }
        return Ok(());
    };
    if ec2.is_empty() && local.is_empty() {
        println!(
            "no EC2 instances and no local workers; start some with `taskctl launch --step STEP --count N` (add --local for this machine)"
        );
        return Ok(());
    }
    if !ec2.is_empty() {
        crate::ec2::print_instances(&ec2);
    }
    if local.is_empty() {
        println!("no local workers");
    } else {
        if !ec2.is_empty() {
            println!();
        }
        crate::local::print_rows(&local);
    }
    Ok(())
}

async fn init(global: &crate::cli::GlobalArgs) -> Result<()> {
    let (store, created) = connect::open_for_init(global).await?;
    match &store {
        Store::Sqlite(s) if created => {
            println!("created the embedded store {}", s.path().display());
        }
        Store::Sqlite(s) => println!("the embedded store {} already exists", s.path().display()),
        Store::Dynamo(d) => match store.init().await? {
            InitOutcome::Created => println!(
                "created table '{}' (index and TTL included); it is active",
                d.table()
            ),
            InitOutcome::AlreadyExists => {
                println!(
                    "table '{}' already exists and matches the schema",
                    d.table()
                );
            }
        },
    }
    Ok(())
}

/// The sheet's header, read where the sheet is, or from a temporary copy
/// (kept until the load ends) when it can be read once only.
async fn open_sheet(
    global: &crate::cli::GlobalArgs,
    arg: &Path,
    options: &SheetOptions,
) -> Result<(Sheet, Option<tempfile::NamedTempFile>)> {
    // A file is read where it is, twice (validated, then loaded); standard
    // input and S3 are first written to a temporary file, kept until the
    // load ends.
    let (input, spooled) = match crate::sheets::source(arg) {
        // A pipe or a process substitution can be read once only.
        crate::sheets::Source::File(path)
            if std::fs::metadata(path).map_or(true, |m| m.is_file()) =>
        {
            (SheetInput::File(path.to_owned()), None)
        }
        source => {
            let file = crate::sheets::spool(global, &source).await?;
            (SheetInput::File(file.path().to_owned()), Some(file))
        }
    };
    Ok((Sheet::open(arg, input, options)?, spooled))
}

/// Checking a million rows takes seconds: a spinner says what is
/// happening, on a terminal.
fn checking_spinner(json: bool) -> ProgressBar {
    if std::io::stderr().is_terminal() && !json {
        let spinner = ProgressBar::new_spinner();
        spinner.set_message("checking the sheet");
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        spinner
    } else {
        ProgressBar::hidden()
    }
}

async fn load(global: &crate::cli::GlobalArgs, args: LoadArgs) -> Result<()> {
    // Everything that can be checked without the store is checked first:
    // a bad input writes nothing.
    let script = match (&args.script, &args.command) {
        (Some(path), _) => read_script(path)?,
        (None, Some(text)) => text.clone(),
        (None, None) => unreachable!("clap requires --script or --command"),
    };
    let git = args
        .script
        .as_deref()
        .map(|path| provenance::git_state(path, &script));
    if args.require_clean
        && let (Some(path), Some(state)) = (&args.script, &git)
    {
        provenance::require_clean(path, state)?;
    }
    let (sheet, _spooled) = open_sheet(global, &args.sheet, &sheet_options(&args)).await?;
    let request = load_request(&args, script)?;
    // A named store must exist (a mistyped path or table name must not
    // start a new one), and is checked before the sheet is read through;
    // the default embedded store is made on first use, once the sheet has
    // passed.
    let default_store = global.table == taskfleet::connect::DEFAULT_TABLE;
    let named = if default_store {
        None
    } else {
        let store = connect::open(global).await?;
        store.check().await?;
        Some(store)
    };
    let checking = checking_spinner(args.json);
    let prepared = load::prepare(request, sheet);
    checking.finish_and_clear();
    let prepared = prepared?;
    let store = if let Some(store) = named {
        store
    } else {
        let (store, created) = connect::open_for_init(global).await?;
        if created {
            eprintln!(
                "created the embedded task store {} (as `taskctl init` would)",
                global.table
            );
        }
        store.check().await?;
        store
    };

    let bar = if std::io::stderr().is_terminal() && !args.json {
        let bar = ProgressBar::new(prepared.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} loading {pos}/{len} [{bar:40}] {per_sec} eta {eta}",
            )
            .expect("template is valid")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let report = load::load(&store, &prepared, &|n| bar.set_position(n as u64)).await;
    bar.finish_and_clear();
    let report = report?;
    let record = provenance::keep(
        &store,
        &report,
        &args.sheet.to_string_lossy(),
        args.script.as_deref(),
        git.and_then(Result::ok),
    )
    .await?;

    if args.json {
        let mut out = serde_json::to_value(&report)?;
        out["record"] = serde_json::to_value(&record)?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if report.step_created {
        println!("created step '{}'", report.step);
    } else if report.settings_changed {
        println!("updated the settings of step '{}'", report.step);
    }
    let mut line = format!(
        "loaded {} tasks into step '{}', skipped {} existing, in {:.1} s",
        report.loaded, report.step, report.skipped_existing, report.seconds
    );
    if args.replace {
        let _ = write!(
            line,
            "; replaced {}, left {} running tasks alone",
            report.replaced, report.skipped_running
        );
    }
    println!("{line}");
    Ok(())
}

/// How `args` say the sheet is read.
fn sheet_options(args: &LoadArgs) -> SheetOptions {
    SheetOptions {
        id_columns: args.id_column.clone(),
        row_ids: args.row_ids,
        format: args.format.map(|f| match f {
            SheetFormat::Csv => Format::Csv,
            SheetFormat::Tsv => Format::Tsv,
        }),
        section: args.section.clone(),
        renames: args.renames.clone(),
    }
}

/// The load `args` ask for, with `script`.
fn load_request(args: &LoadArgs, script: String) -> Result<LoadRequest> {
    let rules = retry_rules(args)?;
    Ok(LoadRequest {
        step: args.step.clone(),
        script,
        settings: SettingsChange {
            max_attempts: args.max_attempts,
            lease: args.lease,
            timeout: args.timeout,
            shards: args.shards,
            output_tail: args.no_output_tail.then_some(false),
            after: (!args.after.is_empty()).then(|| args.after.clone()),
            rules,
            expire_after: args.expire_after,
        },
        replace: args.replace,
        concurrency: args.concurrency,
    })
}

/// The retry rules `args` give the step: `None` keeps the stored ones.
/// `--escalate-to` goes into every `--retry-on` that names no step and
/// may escalate.
fn retry_rules(args: &LoadArgs) -> Result<Option<Vec<Rule>>> {
    if args.no_retry_rules {
        return Ok(Some(Vec::new()));
    }
    if args.retry_on.is_empty() && args.fail_on.is_empty() {
        return Ok(None);
    }
    let mut rules = args.fail_on.clone();
    for text in &args.retry_on {
        // Where it may have one (not for free or lost rules, say).
        let escalated = args
            .escalate_to
            .as_ref()
            .filter(|_| !text.contains("escalate-to="))
            .and_then(|to| {
                taskfleet::rules::parse(&format!("{text}:escalate-to={to}"), false).ok()
            });
        let rule = match escalated {
            Some(rule) => rule,
            None => taskfleet::rules::parse(text, false).map_err(anyhow::Error::msg)?,
        };
        rules.push(rule);
    }
    Ok(Some(rules))
}

fn read_script(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the script {}", path.display()))?;
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("the script {} is not valid UTF-8", path.display()))
}

async fn status(global: &crate::cli::GlobalArgs, args: &StatusArgs) -> Result<()> {
    let store = connect::open(global).await?;
    if args.failed {
        let failed = store.failed(args.step.as_deref(), args.limit).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&failed)?);
        } else {
            print_failed(&failed);
        }
        return Ok(());
    }
    if args.watch {
        return watch(&store, args.step.as_deref()).await;
    }
    let steps = store.status(args.step.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&steps)?);
    } else if steps.is_empty() {
        println!(
            "no steps in {}; load one with `taskctl load --step STEP ...`",
            store.describe()
        );
    } else {
        print!("{}", status_table(&steps));
    }
    Ok(())
}

/// Refreshes the status until nothing is left to do, or Ctrl-C.
async fn watch(store: &Store, step: Option<&str>) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    let multi = indicatif::MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:<14} [{bar:36}] {pos:>6}/{len:<6} {msg}  eta {eta}")
            .expect("template is valid")
            .progress_chars("=> ");
    let mut bars: Vec<(String, ProgressBar)> = Vec::new();
    let mut last_line = String::new();
    let started = std::time::Instant::now();
    let mut first_finished: Option<u64> = None;
    let steps = loop {
        let steps = store.status(step).await?;
        if steps.is_empty() {
            println!(
                "no steps in {}; load one with `taskctl load --step STEP ...`",
                store.describe()
            );
            return Ok(());
        }
        let finished: u64 = steps.iter().map(|s| s.done + s.failed + s.cancelled).sum();
        let base = *first_finished.get_or_insert(finished);
        let rate =
            finished.saturating_sub(base) as f64 / started.elapsed().as_secs_f64().max(0.001);
        for s in &steps {
            let msg = format!(
                "{} running, {} pending, {} waiting, {} failed, {rate:.1} tasks/s",
                s.running, s.pending, s.waiting, s.failed
            );
            if tty {
                let bar = if let Some((_, bar)) = bars.iter().find(|(name, _)| name == &s.step) {
                    bar.clone()
                } else {
                    let bar = multi.add(ProgressBar::new(s.total).with_style(style.clone()));
                    bar.set_prefix(s.step.clone());
                    bars.push((s.step.clone(), bar.clone()));
                    bar
                };
                bar.set_length(s.total);
                bar.set_position(s.done + s.failed + s.cancelled);
                bar.set_message(msg);
            }
        }
        if !tty {
            let line = steps
                .iter()
                .map(|s| {
                    format!(
                        "{}: {}/{} done, {} running, {} failed",
                        s.step, s.done, s.total, s.running, s.failed
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            if line != last_line {
                println!("{line}");
                last_line = line;
            }
        }
        if steps.iter().all(|s| s.remaining() == 0) {
            break steps;
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => break steps,
        }
    };
    for (_, bar) in &bars {
        bar.finish();
    }
    print!("{}", status_table(&steps));
    Ok(())
}

async fn recount(global: &crate::cli::GlobalArgs, args: &RecountArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let steps: Vec<String> = store
        .status(args.step.as_deref())
        .await?
        .into_iter()
        .map(|s| s.step)
        .collect();
    let mut all = Vec::new();
    for step in &steps {
        let meta = store
            .step(step)
            .await?
            .with_context(|| format!("step '{step}' disappeared while it was recounted"))?;
        if let Some(lock) = &meta.first_load
            && lock.until > taskfleet::time::Timestamp::now()
            && !args.dry_run
        {
            anyhow::bail!(
                "step '{step}' is being loaded for the first time (by {}), which counts as it writes; \
                 recount it once that load has ended",
                lock.holder
            );
        }
        all.extend(store.recount(&meta, !args.dry_run).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!(
            "the counters of {} agree with the tasks",
            match steps.as_slice() {
                [one] => format!("step '{one}'"),
                _ => format!("{} steps", steps.len()),
            }
        );
        return Ok(());
    }
    let verb = if args.dry_run {
        "would correct"
    } else {
        "corrected"
    };
    for c in &all {
        println!(
            "{verb} {} shard {:03}: {} was {}, the tasks say {}",
            c.step, c.shard, c.counter, c.was, c.now
        );
    }
    Ok(())
}

/// The human status table.
pub fn status_table(steps: &[StepStatus]) -> String {
    let width = steps.iter().map(|s| s.step.len()).max().unwrap_or(4).max(4);
    // Shown once a task of a step shown was cancelled.
    let cancelled = steps.iter().any(|s| s.cancelled > 0);
    let mut out = format!(
        "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  ",
        "STEP", "TOTAL", "WAITING", "PENDING", "RUNNING", "DONE", "FAILED"
    );
    if cancelled {
        let _ = write!(out, "{:>9}  ", "CANCELLED");
    }
    out.push_str(" DONE%\n");
    for s in steps {
        let _ = write!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  ",
            s.step, s.total, s.waiting, s.pending, s.running, s.done, s.failed
        );
        if cancelled {
            let _ = write!(out, "{:>9}  ", s.cancelled);
        }
        let _ = writeln!(out, "{:>5.1}%", s.percent_done);
    }
    for s in steps.iter().filter(|s| s.counts_drift) {
        let _ = writeln!(
            out,
            "warning: the counters of step '{}' account for more tasks than were loaded; \
             correct them with `taskctl recount --step {}`",
            s.step, s.step
        );
    }
    out
}

fn print_failed(failed: &[FailedTask]) {
    if failed.is_empty() {
        println!("no failed tasks");
        return;
    }
    for f in failed {
        let how = match (f.exit_code, f.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            (None, None) => "no exit status".to_owned(),
        };
        let class = f
            .failure_class
            .map_or_else(|| "-".to_owned(), |c| c.to_string());
        let when = f
            .finished_at
            .map_or_else(|| "-".to_owned(), |t| t.to_string());
        println!(
            "{}/{}: {how}, class {class}, {} attempts, at {when}",
            f.step, f.task_id, f.attempt
        );
        if let Some(tail) = &f.output_tail {
            let lines: Vec<&str> = tail.lines().collect();
            for line in &lines[lines.len().saturating_sub(10)..] {
                println!("    | {line}");
            }
        }
        if let Some(log) = &f.log_uri {
            println!("    log: {log} (taskctl logs {} {})", f.step, f.task_id);
        }
    }
}
