//! Task ids: one column's value, several columns' values joined, or the
//! row's number; and, when ids collide, the columns that would make them
//! unique.
//!
//! Several columns are joined with `/`; a `/` or `%` inside a value is
//! written `%2F` or `%25`, so two different rows never join to the same
//! id (`a/b` + `c` is `a%2Fb/c`, `a` + `b/c` is `a/b%2Fc`).

use std::collections::HashSet;

use super::Column;
use crate::model::NewTask;

/// Where a task's id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// These columns (by index), joined.
    Columns(Vec<usize>),
    /// The row's number among the sheet's rows, from 1.
    RowNumber,
}

impl IdSource {
    /// For messages: a column's name, several joined with ',', or
    /// `(row number)`.
    pub fn describe(&self, columns: &[super::Column]) -> String {
        match self {
            IdSource::RowNumber => "(row number)".to_owned(),
            IdSource::Columns(list) => list
                .iter()
                .map(|&i| columns[i].name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// The separator between the values of several id columns.
pub const SEPARATOR: char = '/';

/// The id of a row from `values` (the row's fields, by column).
pub fn join(indices: &[usize], values: &[&str]) -> String {
    if let [one] = indices {
        return values[*one].trim().to_owned();
    }
    let mut out = String::new();
    for (n, &i) in indices.iter().enumerate() {
        if n > 0 {
            out.push(SEPARATOR);
        }
        for c in values[i].trim().chars() {
            match c {
                '%' => out.push_str("%25"),
                '/' => out.push_str("%2F"),
                c => out.push(c),
            }
        }
    }
    out
}

/// Rows held for the search are capped: past this, a collision is
/// reported without a suggestion.
pub const MAX_ROWS_SEARCHED: usize = 200_000;

/// The smallest set of columns (at most three, earliest first) whose
/// joined values are unique over `rows`, if there is one.
pub fn unique_columns(columns: usize, rows: &[Vec<String>]) -> Option<Vec<usize>> {
    let unique = |set: &[usize]| {
        let mut seen = HashSet::with_capacity(rows.len());
        rows.iter().all(|row| {
            let values: Vec<&str> = row.iter().map(String::as_str).collect();
            seen.insert(join(set, &values))
        })
    };
    for a in 0..columns {
        if unique(&[a]) {
            return Some(vec![a]);
        }
    }
    for a in 0..columns {
        for b in a + 1..columns {
            if unique(&[a, b]) {
                return Some(vec![a, b]);
            }
        }
    }
    for a in 0..columns {
        for b in a + 1..columns {
            for c in b + 1..columns {
                if unique(&[a, b, c]) {
                    return Some(vec![a, b, c]);
                }
            }
        }
    }
    None
}

/// "; the columns a,b together are unique: --id-column a,b", when some
/// set of at most three columns is.
pub(super) fn collision_hint(columns: &[Column], tasks: &[NewTask]) -> String {
    if tasks.len() > MAX_ROWS_SEARCHED {
        return String::new();
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| columns.iter().map(|c| t.env[&c.var].clone()).collect())
        .collect();
    match unique_columns(columns.len(), &rows) {
        Some(set) => {
            let names: Vec<&str> = set.iter().map(|&i| columns[i].name.as_str()).collect();
            let joined = names.join(",");
            let option = if joined
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ','))
            {
                format!("--id-column {joined}")
            } else {
                format!("--id-column '{joined}'")
            };
            let which = if set.len() == 1 {
                format!("the column {} is unique", names[0])
            } else {
                format!("the columns {} together are unique", names.join(", "))
            };
            format!("; {which}: {option}")
        }
        None => "; no set of up to three columns is unique: give every row an id column, or --row-ids to number the rows".to_owned(),
    }
}
