//! Sheets with sections, as sequencers write them: Illumina v1
//! (`[Header]`, `[Reads]`, `[Settings]`, `[Data]`) and v2
//! (`[BCLConvert_Data]`, `[Cloud_Data]`, ...). Key-value sections come
//! before the tables; lines are padded with trailing commas, blank lines
//! separate sections, line ends may be CRLF or LF.
//!
//! A section holds a table when it is `[Data]` or its name ends in `_Data`.
//! `--section NAME` picks one; without it the only table is taken, and a
//! sheet with several gets a message listing them.

use super::{ErrFn, SheetError};

/// One `[Name]` section: its name, and where its lines are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name between the brackets.
    pub name: String,
    /// Byte offset of the line after the `[Name]` line.
    pub start: u64,
    /// Byte offset where the next section's line starts (or the end).
    pub end: u64,
}

impl Section {
    /// Whether the section holds a table.
    pub fn is_table(&self) -> bool {
        self.name.eq_ignore_ascii_case("data") || self.name.to_ascii_lowercase().ends_with("_data")
    }
}

/// What the start of a sheet says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing but blank lines.
    Empty,
    /// An ordinary sheet: its first non-blank line is not a `[Name]` line.
    Plain,
    /// A sheet with sections.
    Sections(Vec<Section>),
}

/// Reads `reader` (which starts at byte `base` of the file) line by line:
/// an ordinary sheet is told at its first non-blank line; a sheet with
/// sections is read to its end, one line at a time.
pub fn find(reader: &mut impl std::io::BufRead, base: u64) -> std::io::Result<Found> {
    let mut sections: Vec<Section> = Vec::new();
    let mut offset = base;
    let mut first = true;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let here = offset;
        offset += n as u64;
        let text = trim_padding(&line);
        if text.is_empty() {
            continue;
        }
        let name = text
            .strip_prefix(b"[")
            .and_then(|t| t.strip_suffix(b"]"))
            .and_then(|n| std::str::from_utf8(n).ok());
        match name {
            Some(name) => {
                if let Some(last) = sections.last_mut() {
                    last.end = here;
                }
                sections.push(Section {
                    name: name.trim().to_owned(),
                    start: offset,
                    end: u64::MAX,
                });
            }
            None if first => return Ok(Found::Plain),
            None => {}
        }
        first = false;
    }
    if first {
        return Ok(Found::Empty);
    }
    if let Some(last) = sections.last_mut() {
        last.end = offset;
    }
    Ok(Found::Sections(sections))
}

/// The line without its line end, surrounding blanks and trailing commas.
fn trim_padding(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r' | b',' | b' ' | b'\t') {
        end -= 1;
    }
    let mut start = 0;
    while start < end && matches!(line[start], b' ' | b'\t') {
        start += 1;
    }
    &line[start..end]
}

/// The section to load: `wanted`, or the only one holding a table.
pub fn choose<'a>(
    sections: &'a [Section],
    wanted: Option<&str>,
    err: &ErrFn<'_>,
) -> Result<&'a Section, SheetError> {
    let tables: Vec<&Section> = sections.iter().filter(|s| s.is_table()).collect();
    let names = |list: &[&Section]| {
        list.iter()
            .map(|s| format!("[{}]", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(wanted) = wanted {
        let wanted = wanted.trim_start_matches('[').trim_end_matches(']');
        return sections
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(wanted))
            .ok_or_else(|| {
                let all: Vec<&Section> = sections.iter().collect();
                err(
                    None,
                    None,
                    format!(
                        "has no section [{wanted}]; its sections are {}",
                        names(&all)
                    ),
                )
            });
    }
    match tables.as_slice() {
        [one] => Ok(one),
        [] => Err(err(
            None,
            None,
            format!(
                "is a sheet with sections ({}) but none holds a table ([Data] or [..._Data]); give --section NAME",
                names(&sections.iter().collect::<Vec<_>>())
            ),
        )),
        several => Err(err(
            None,
            None,
            format!(
                "is a sheet with sections, and {} hold tables; choose one with --section, e.g. --section {}",
                names(several),
                several[0].name
            ),
        )),
    }
}
