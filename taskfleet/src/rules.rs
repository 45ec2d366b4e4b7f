//! Retry rules of a step (`load --retry-on`, `--fail-on`,
//! `--escalate-to`): what happens to a task after an attempt that failed,
//! decided once here for the agent that ends the attempt and for the
//! worker that reclaims a lost one.
//!
//! A rule matches a failure by exit code, signal or failure class and says
//! what to do with it:
//!
//! - `retry-on 'exit=137:attempts=3'`: retried until 3 attempts have
//!   failed (instead of the step's `max attempts`);
//! - `retry-on 'exit=137:escalate-to=align-large'`: once its attempts here
//!   are used (one unless `attempts=` says more), the task is run on the
//!   step `align-large` (its launch template: a bigger instance type) and
//!   takes that task's outcome;
//! - `retry-on 'class=lost:free'`: retried without using an attempt;
//! - `fail-on 'exit=2'`: failed at once.
//!
//! `fail-on` rules are looked at first, then `retry-on` rules, each in the
//! order given; the first that matches decides. A failure no rule matches
//! is retried up to the step's `max attempts`. Interruptions of the worker
//! (`spot`, `interrupted`, `host`) are never the task's fault: they are
//! always retried without using an attempt, whatever the rules say.

use serde::{Deserialize, Serialize};

use crate::model::{FailureClass, StepSettings};

/// What failures a rule applies to: every part given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Match {
    /// Exit codes (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit: Vec<i32>,
    /// Signals (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signal: Vec<i32>,
    /// The failure class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<FailureClass>,
}

/// What a rule does with a failure it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "do")]
pub enum Action {
    /// Retried while fewer than `attempts` attempts have failed; then
    /// escalated to `escalate_to` if given, else failed.
    Retry {
        /// Failed attempts (counting this one) after which it stops here.
        attempts: u32,
        /// The step whose task takes over once they are used.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        escalate_to: Option<String>,
    },
    /// Retried without using an attempt.
    Free,
    /// Failed at once.
    Fail,
}

/// One retry rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The failures it applies to.
    pub on: Match,
    /// What happens to them.
    #[serde(flatten)]
    pub action: Action,
}

/// What comes after an attempt that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Pending again; `counts` says whether the attempt uses one of the
    /// task's attempts.
    Retry {
        /// Whether the attempt counts against the limit.
        counts: bool,
    },
    /// Failed.
    Fail,
    /// Run on this step's task of the same id, whose outcome it takes.
    Escalate(String),
}

/// A failure as an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Its class.
    pub class: FailureClass,
    /// The exit code, if the script exited.
    pub exit_code: Option<i32>,
    /// The signal, if one ended it.
    pub signal: Option<i32>,
}

impl Match {
    fn holds(&self, f: &Failure) -> bool {
        (self.exit.is_empty() || f.exit_code.is_some_and(|c| self.exit.contains(&c)))
            && (self.signal.is_empty() || f.signal.is_some_and(|s| self.signal.contains(&s)))
            && self.class.is_none_or(|c| c == f.class)
    }
}

/// Whether an attempt that ended as `class` is an interruption of the
/// worker, never the task's fault.
pub const fn is_interruption(class: FailureClass) -> bool {
    matches!(
        class,
        FailureClass::Interrupted | FailureClass::Spot | FailureClass::Host
    )
}

/// What comes after `failure`, on a task of a step with `settings` that
/// had `failed_attempts` failed attempts before this one.
pub fn decide(settings: &StepSettings, failure: &Failure, failed_attempts: u32) -> Next {
    if is_interruption(failure.class) {
        return Next::Retry { counts: false };
    }
    let used = failed_attempts + 1;
    let rule = settings
        .rules
        .iter()
        .filter(|r| r.action == Action::Fail)
        .chain(settings.rules.iter().filter(|r| r.action != Action::Fail))
        .find(|r| r.on.holds(failure));
    match rule.map(|r| &r.action) {
        Some(Action::Free) => Next::Retry { counts: false },
        Some(Action::Retry { attempts, .. }) if used < *attempts => Next::Retry { counts: true },
        Some(Action::Retry {
            escalate_to: Some(step),
            ..
        }) => Next::Escalate(step.clone()),
        None if used < settings.max_attempts => Next::Retry { counts: true },
        Some(Action::Fail | Action::Retry { .. }) | None => Next::Fail,
    }
}

/// Classes a rule may name, as users write them.
const RULE_CLASSES: [FailureClass; 5] = [
    FailureClass::Exit,
    FailureClass::Signal,
    FailureClass::Timeout,
    FailureClass::Launch,
    FailureClass::Lost,
];

/// Parses one `--retry-on` (`fail = false`) or `--fail-on` rule:
/// `exit=137[,139]`, `signal=9`, `class=timeout`, joined by `:`, then for
/// `--retry-on` `attempts=N`, `escalate-to=STEP` or `free`.
pub fn parse(text: &str, fail: bool) -> Result<Rule, String> {
    let flag = if fail { "--fail-on" } else { "--retry-on" };
    let mut on = Match::default();
    let mut attempts = None;
    let mut escalate_to = None;
    let mut free = false;
    for part in text.split(':').map(str::trim) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let numbers = |what: &str| -> Result<Vec<i32>, String> {
            value
                .split(',')
                .map(|v| {
                    v.trim().parse::<i32>().map_err(|_| {
                        format!("{flag} '{text}': {what} takes numbers, e.g. {what}=137,139")
                    })
                })
                .collect()
        };
        match (key, fail) {
            ("exit", _) => on.exit = numbers("exit")?,
            ("signal", _) => on.signal = numbers("signal")?,
            ("class", _) => {
                let class = RULE_CLASSES
                    .iter()
                    .find(|c| c.as_str() == value)
                    .ok_or_else(|| class_error(flag, text, value))?;
                on.class = Some(*class);
            }
            ("attempts", false) => {
                attempts = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            format!("{flag} '{text}': attempts takes a number of 1 or more")
                        })?,
                );
            }
            ("escalate-to", false) if !value.is_empty() => escalate_to = Some(value.to_owned()),
            ("free", false) if value.is_empty() => free = true,
            _ => {
                let allowed = if fail {
                    "exit=N[,N..], signal=N[,N..] or class=C"
                } else {
                    "exit=N[,N..], signal=N[,N..], class=C, attempts=N, escalate-to=STEP or free"
                };
                return Err(format!(
                    "{flag} '{text}': unknown part '{part}'; a rule is made of {allowed}, joined by ':'"
                ));
            }
        }
    }
    if on == Match::default() {
        return Err(format!(
            "{flag} '{text}': say which failures it is for (exit=N, signal=N or class=C)"
        ));
    }
    let action = if fail {
        Action::Fail
    } else if free {
        if attempts.is_some() || escalate_to.is_some() {
            return Err(format!(
                "{flag} '{text}': free (no attempt used) goes with neither attempts= nor escalate-to="
            ));
        }
        if on.class != Some(FailureClass::Lost) {
            return Err(format!(
                "{flag} '{text}': only class=lost may be free; a failure of the script retried without using an attempt would run for ever"
            ));
        }
        Action::Free
    } else {
        if attempts.is_none() && escalate_to.is_none() {
            return Err(format!(
                "{flag} '{text}': say attempts=N, escalate-to=STEP or both"
            ));
        }
        if escalate_to.is_some()
            && matches!(on.class, Some(FailureClass::Lost | FailureClass::Launch))
        {
            return Err(format!(
                "{flag} '{text}': escalate-to is for what the script did (exit codes, signals, timeouts), not for class {}",
                on.class.map_or("", FailureClass::as_str)
            ));
        }
        Action::Retry {
            attempts: attempts.unwrap_or(1),
            escalate_to,
        }
    };
    Ok(Rule { on, action })
}

fn class_error(flag: &str, text: &str, value: &str) -> String {
    let names: Vec<&str> = RULE_CLASSES.iter().map(|c| c.as_str()).collect();
    let why = if ["spot", "interrupted", "host"].contains(&value) {
        " (interruptions are always retried without using an attempt)".to_owned()
    } else {
        String::new()
    };
    format!(
        "{flag} '{text}': class '{value}' cannot be given a rule{why}; rules are for {}",
        names.join(", ")
    )
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        let list = |v: &[i32]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.on.exit.is_empty() {
            parts.push(format!("exit={}", list(&self.on.exit)));
        }
        if !self.on.signal.is_empty() {
            parts.push(format!("signal={}", list(&self.on.signal)));
        }
        if let Some(c) = self.on.class {
            parts.push(format!("class={c}"));
        }
        let flag = match &self.action {
            Action::Fail => "fail-on",
            Action::Free => {
                parts.push("free".into());
                "retry-on"
            }
            Action::Retry {
                attempts,
                escalate_to,
            } => {
                parts.push(format!("attempts={attempts}"));
                if let Some(s) = escalate_to {
                    parts.push(format!("escalate-to={s}"));
                }
                "retry-on"
            }
        };
        write!(f, "{flag} {}", parts.join(":"))
    }
}

/// The steps `rules` escalate to, each once.
pub fn escalation_steps(rules: &[Rule]) -> Vec<String> {
    let mut out: Vec<String> = rules
        .iter()
        .filter_map(|r| match &r.action {
            Action::Retry {
                escalate_to: Some(s),
                ..
            } => Some(s.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rules: &[(&str, bool)]) -> StepSettings {
        StepSettings {
            rules: rules.iter().map(|(t, f)| parse(t, *f).unwrap()).collect(),
            ..StepSettings::default()
        }
    }

    fn exit(code: i32) -> Failure {
        Failure {
            class: FailureClass::Exit,
            exit_code: Some(code),
            signal: None,
        }
    }

    #[test]
    fn rules_decide_by_exit_code_and_class_in_order() {
        let s = settings(&[
            ("exit=137:attempts=2:escalate-to=align-large", false),
            ("exit=2", true),
            ("class=lost:free", false),
            ("class=timeout:attempts=5", false),
        ]);
        // 137: once more here, then on the big step.
        assert_eq!(decide(&s, &exit(137), 0), Next::Retry { counts: true });
        assert_eq!(
            decide(&s, &exit(137), 1),
            Next::Escalate("align-large".into())
        );
        assert_eq!(decide(&s, &exit(2), 0), Next::Fail);
        // No rule: the step's limit (3).
        assert_eq!(decide(&s, &exit(1), 1), Next::Retry { counts: true });
        assert_eq!(decide(&s, &exit(1), 2), Next::Fail);
        let lost = Failure {
            class: FailureClass::Lost,
            exit_code: None,
            signal: None,
        };
        assert_eq!(decide(&s, &lost, 9), Next::Retry { counts: false });
        let timeout = Failure {
            class: FailureClass::Timeout,
            ..lost
        };
        assert_eq!(decide(&s, &timeout, 3), Next::Retry { counts: true });
        assert_eq!(decide(&s, &timeout, 4), Next::Fail);
        // Interruptions: free whatever the rules say.
        let spot = Failure {
            class: FailureClass::Spot,
            ..lost
        };
        let strict = settings(&[("class=exit", true)]);
        assert_eq!(decide(&strict, &spot, 99), Next::Retry { counts: false });
        // A fail-on rule wins over a retry-on rule given before it.
        let both = settings(&[("exit=2:attempts=9", false), ("exit=2", true)]);
        assert_eq!(decide(&both, &exit(2), 0), Next::Fail);
    }

    #[test]
    fn rules_read_back_as_written_and_bad_ones_say_why() {
        for (text, fail, shown) in [
            (
                "exit=137:escalate-to=big",
                false,
                "retry-on exit=137:attempts=1:escalate-to=big",
            ),
            (
                "exit=1,2 : attempts=4",
                false,
                "retry-on exit=1,2:attempts=4",
            ),
            ("signal=9", true, "fail-on signal=9"),
            ("class=lost:free", false, "retry-on class=lost:free"),
        ] {
            assert_eq!(parse(text, fail).unwrap().to_string(), shown);
        }
        for (text, fail, says) in [
            ("attempts=3", false, "say which failures"),
            ("exit=x:attempts=3", false, "takes numbers"),
            ("exit=137", false, "say attempts=N"),
            ("exit=137:attempts=0", false, "1 or more"),
            ("exit=2:free", false, "only class=lost"),
            ("class=spot:attempts=2", false, "always retried"),
            ("class=lost:escalate-to=big", false, "not for class lost"),
            ("exit=2:attempts=2", true, "unknown part 'attempts=2'"),
        ] {
            let err = parse(text, fail).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        let rule = parse("exit=137:attempts=2:escalate-to=big", false).unwrap();
        let json = serde_json::to_string(&rule).unwrap();
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), rule);
    }
}
