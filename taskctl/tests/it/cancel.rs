//! `taskctl cancel` and `taskctl delete-step`, on both stores with a real
//! agent whose scripts sleep: pending tasks are cancelled at once, running
//! ones stop within a renewal (their scripts never finish), what waits for
//! them is cancelled with them, nothing more runs and the counts are
//! exact; `retry --task` puts one back. `delete-step` refuses a step that
//! another names or whose tasks run, and removes a whole step otherwise.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::support::{Run, Taskctl, TestTable, agent_command, embedded};

/// An agent with two slots on `step`, until the step has nothing to run.
fn start_agent(table: &str, endpoint: Option<&str>, dir: &Path, step: &str) -> Child {
    agent_command(table, endpoint, dir, step)
        .args(["--slots", "2", "--kill-grace", "1s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits up to `secs` for `ok`.
fn wait_for(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for `child` to exit by itself, and says whether it exited 0.
fn exits_by_itself(child: &mut Child, secs: u64) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() >= until {
            let _ = child.kill();
            panic!("the agent did not stop by itself within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(t: &dyn Fn(&[&str]) -> Run, step: &str) -> serde_json::Value {
    t(&["status", "--step", step, "--json"]).ok().json()[0].clone()
}

fn n(s: &serde_json::Value, k: &str) -> u64 {
    s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"))
}

fn files_ending(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(suffix)
        })
        .count()
}

/// What every part of the test uses: where the scripts leave their marks,
/// and the sheet.
struct Setup {
    marks: std::path::PathBuf,
    sheet: String,
}

/// Loads `sheet` into `step` with [`SLEEPER`] as its script and a 3 s
/// lease.
fn load_sleeper(t: &dyn Fn(&[&str]) -> Run, step: &str, sheet: &str) {
    t(&[
        "load",
        "--step",
        step,
        "--lease",
        "3s",
        "--command",
        SLEEPER,
        sheet,
    ])
    .ok();
}

/// Each attempt leaves a mark when it starts, and one if it finishes.
const SLEEPER: &str =
    r#"touch "$MARKS/$SAMPLE.started"; sleep 60; touch "$MARKS/$SAMPLE.finished""#;

fn cancel_then_delete(t: &dyn Fn(&[&str]) -> Run, agent: &dyn Fn(&str) -> Child, dir: &Path) {
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let sheet = dir.join("s.csv");
    let mut rows = "sample,marks\n".to_owned();
    for i in 0..6 {
        writeln!(rows, "S{i:02},{}", marks.display()).unwrap();
    }
    std::fs::write(&sheet, rows).unwrap();
    let setup = Setup {
        marks,
        sheet: sheet.to_str().unwrap().to_owned(),
    };
    let ran = cancel_part(t, agent, &setup);
    delete_part(t, agent, &setup, &ran);
}

/// Cancels a step with two tasks running; returns a task that ran.
fn cancel_part(t: &dyn Fn(&[&str]) -> Run, agent: &dyn Fn(&str) -> Child, setup: &Setup) -> String {
    let (marks, sheet) = (&setup.marks, setup.sheet.as_str());
    load_sleeper(t, "align", sheet);
    t(&[
        "load",
        "--step",
        "qc",
        "--after",
        "align",
        "--command",
        "true",
        sheet,
    ])
    .ok();
    let mut worker = agent("align");
    wait_for(60, "two running tasks", || {
        n(&status(t, "align"), "running") == 2 && files_ending(marks, ".started") == 2
    });

    // Named by qc (--after): refused, whatever runs.
    let refused = t(&["delete-step", "align", "--force"]).fails();
    assert!(refused.contains("named by step(s) qc"), "{refused}");

    let dry = t(&["cancel", "--step", "align", "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(dry["cancelled"].as_array().unwrap().len(), 4, "{dry}");
    assert_eq!(dry["asked"].as_array().unwrap().len(), 2, "{dry}");
    let s = status(t, "align");
    assert_eq!(
        (n(&s, "cancelled"), n(&s, "pending")),
        (0, 4),
        "--dry-run changes nothing"
    );

    let done = t(&["cancel", "--step", "align", "--json"]).ok().json();
    assert_eq!(done["cancelled"].as_array().unwrap().len(), 4, "{done}");
    assert_eq!(done["asked"].as_array().unwrap().len(), 2, "{done}");
    // The running two stop at their next renewal (a second here).
    wait_for(20, "the running tasks to end cancelled", || {
        n(&status(t, "align"), "cancelled") == 6
    });
    assert!(
        exits_by_itself(&mut worker, 30),
        "the agent exits 0 with nothing left"
    );
    let s = status(t, "align");
    assert_eq!(
        (
            n(&s, "total"),
            n(&s, "running"),
            n(&s, "pending"),
            n(&s, "done")
        ),
        (6, 0, 0, 0)
    );
    assert!(s["percent_done"].as_f64().unwrap() <= 100.0);
    assert_eq!(files_ending(marks, ".started"), 2, "nothing more ran");
    assert_eq!(
        files_ending(marks, ".finished"),
        0,
        "the scripts were killed"
    );
    let q = status(t, "qc");
    assert_eq!((n(&q, "cancelled"), n(&q, "waiting")), (6, 0), "{q}");
    // A task that ran: its attempt ended cancelled, not failed.
    let mut ran: Vec<String> = std::fs::read_dir(marks)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .replace(".started", "")
        })
        .collect();
    let shown = t(&["show", "align", &ran[0], "--json"]).ok().json();
    assert_eq!(shown["state"], "cancelled", "{shown}");
    assert_eq!(shown["failed_attempts"], 0, "{shown}");
    assert_eq!(shown["history"][0]["failure_class"], "cancelled", "{shown}");
    assert!(shown["cancelled_by"].is_string(), "{shown}");
    let dep = t(&["show", "qc", &ran[0], "--json"]).ok().json();
    assert_eq!(
        (&dep["state"], &dep["failure_class"]),
        (&"cancelled".into(), &"upstream".into())
    );

    // Put back: one sample runs again, its qc task waits again.
    let back = t(&["retry", "--step", "align", "--task", &ran[0]])
        .ok()
        .stdout();
    assert!(back.contains("retried 1"), "{back}");
    let (s, q) = (status(t, "align"), status(t, "qc"));
    assert_eq!((n(&s, "cancelled"), n(&s, "pending")), (5, 1));
    assert_eq!((n(&q, "cancelled"), n(&q, "waiting")), (5, 1));
    let recount = t(&["recount", "--step", "align"]).ok().stdout();
    assert!(recount.contains("agree with the tasks"), "{recount}");
    let recount = t(&["recount", "--step", "qc"]).ok().stdout();
    assert!(recount.contains("agree with the tasks"), "{recount}");

    ran.swap_remove(0)
}

/// Deletes the steps: refused while named or running, then whole.
fn delete_part(
    t: &dyn Fn(&[&str]) -> Run,
    agent: &dyn Fn(&str) -> Child,
    setup: &Setup,
    ran: &str,
) {
    let (marks, sheet) = (&setup.marks, setup.sheet.as_str());
    // delete-step: qc first (nothing names it), then align.
    let dry = t(&["delete-step", "qc", "--dry-run", "--json"]).ok().json();
    assert_eq!(
        (dry["tasks"].as_u64(), dry["removed"].as_u64()),
        (Some(6), Some(0))
    );
    assert_eq!(n(&status(t, "qc"), "total"), 6, "--dry-run changes nothing");
    let gone = t(&["delete-step", "qc", "--json"]).ok().json();
    assert_eq!(gone["removed"], 6, "{gone}");
    let missing = t(&["status", "--step", "qc"]).fails();
    assert!(missing.contains("qc"), "{missing}");
    t(&["delete-step", "align"]).ok();
    assert!(
        t(&["show", "align", ran]).code() != Some(0),
        "its tasks are gone"
    );

    // A step whose tasks run: refused without --force.
    load_sleeper(t, "solo", sheet);
    let mut worker = agent("solo");
    wait_for(60, "two running tasks", || {
        n(&status(t, "solo"), "running") == 2
    });
    let refused = t(&["delete-step", "solo"]).fails();
    assert!(refused.contains("2 running task(s)"), "{refused}");
    assert_eq!(n(&status(t, "solo"), "total"), 6, "nothing was deleted");
    t(&["delete-step", "solo", "--force"]).ok();
    // Its worker loses its tasks at the next renewal and stops.
    assert!(
        exits_by_itself(&mut worker, 30),
        "the agent exits with nothing left"
    );
    assert_eq!(
        files_ending(marks, ".finished"),
        0,
        "the scripts were killed"
    );
    let missing = t(&["status", "--step", "solo"]).fails();
    assert!(missing.contains("solo"), "{missing}");
}

/// Tasks of the step cancelled while their upstream tasks finish.
const MOVING: usize = 600;

/// `cancel --step qc` while the agent finishes align and so promotes qc's
/// tasks from waiting to pending throughout the cancel: every one ends
/// cancelled, none is left pending (read in one state, moved to the next
/// before its cancel or before that state was read).
fn cancel_while_tasks_move(t: &dyn Fn(&[&str]) -> Run, agent: &dyn Fn(&str) -> Child, dir: &Path) {
    let sheet = dir.join("moving.csv");
    let mut rows = "sample\n".to_owned();
    for i in 0..MOVING {
        writeln!(rows, "S{i:04}").unwrap();
    }
    std::fs::write(&sheet, rows).unwrap();
    let sheet = sheet.to_str().unwrap();
    t(&["load", "--step", "align", "--command", "true", sheet]).ok();
    t(&[
        "load",
        "--step",
        "qc",
        "--after",
        "align",
        "--command",
        "true",
        sheet,
    ])
    .ok();
    let mut worker = agent("align");
    wait_for(60, "align to be under way", || {
        n(&status(t, "align"), "done") >= 20
    });
    let before = n(&status(t, "align"), "done");
    let report = t(&["cancel", "--step", "qc", "--json"]).ok().json();
    let moved_meanwhile = n(&status(t, "align"), "done");
    assert!(
        moved_meanwhile > before,
        "align went on finishing (and promoting qc tasks) during the cancel"
    );
    assert!(exits_by_itself(&mut worker, 180), "align's agent exits 0");
    let q = status(t, "qc");
    assert_eq!(
        (n(&q, "cancelled"), n(&q, "pending"), n(&q, "waiting")),
        (MOVING as u64, 0, 0),
        "every qc task cancelled (align was still finishing: {moved_meanwhile} done after the cancel); {report}"
    );
    assert_eq!(
        report["cancelled"].as_array().unwrap().len(),
        MOVING,
        "each reported once: {report}"
    );
}

/// A case of this file: it runs `taskctl` through the first closure and
/// starts an agent on a step with the second, in the directory given.
type Case = fn(&dyn Fn(&[&str]) -> Run, &dyn Fn(&str) -> Child, &Path);

/// Runs `case` on a fresh embedded store.
fn on_embedded(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let (table, t) = embedded(dir.path());
    t(&["init"]).ok();
    case(
        &t,
        &|step| start_agent(&table, None, dir.path(), step),
        dir.path(),
    );
}

/// Runs `case` on a fresh table of DynamoDB Local.
async fn on_dynamodb(name: &str, case: Case) {
    let table = TestTable::new(name).await;
    let dir = tempfile::tempdir().unwrap();
    case(
        &|args| table.taskctl(args),
        &|step| start_agent(&table.name, Some(&table.endpoint), dir.path(), step),
        dir.path(),
    );
}

#[test]
fn cancel_while_tasks_move_on_the_embedded_store() {
    on_embedded(cancel_while_tasks_move);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_while_tasks_move_on_dynamodb() {
    on_dynamodb("cancelmoving", cancel_while_tasks_move).await;
}

#[test]
fn cancel_and_delete_step_on_the_embedded_store() {
    on_embedded(cancel_then_delete);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_delete_step_on_dynamodb() {
    on_dynamodb("cancel", cancel_then_delete).await;
}
