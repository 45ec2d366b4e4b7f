//! One pass over a sheet's table: the header record, then the rows as
//! tasks, one at a time.

use std::io::Read;
use std::sync::{Arc, Mutex};

use super::input::{Tracked, Window, lock};
use super::{EMPTY, Sheet, SheetError, check_id, ids, is_blank, row_values};
use crate::model::NewTask;

/// A pass over the rows of a sheet.
pub struct RowReader<'a> {
    sheet: &'a Sheet,
    csv: Option<csv::Reader<std::io::Take<Tracked>>>,
    window: Arc<Mutex<Window>>,
    record: csv::ByteRecord,
    rows: usize,
}

impl<'a> RowReader<'a> {
    /// Opens the sheet again and stands at the start of its table.
    pub fn start(sheet: &'a Sheet) -> Result<Self, SheetError> {
        let io = |e: std::io::Error| sheet.error(None, None, format!("cannot read it: {e}"));
        let mut tracked = Tracked::new(sheet.input.open().map_err(io)?);
        tracked.skip(sheet.table.0).map_err(io)?;
        let window = tracked.window();
        let csv = csv::ReaderBuilder::new()
            .delimiter(sheet.format.delimiter())
            .has_headers(false)
            .flexible(true)
            .from_reader(tracked.take(sheet.table.1.saturating_sub(sheet.table.0)));
        Ok(Self {
            sheet,
            csv: Some(csv),
            window,
            record: csv::ByteRecord::new(),
            rows: 0,
        })
    }

    /// The next record that is not blank, and its line; `None` at the end.
    fn next_record(&mut self, what: &str) -> Result<Option<u64>, SheetError> {
        let Some(csv) = self.csv.as_mut() else {
            return Ok(None);
        };
        loop {
            let more = csv.read_byte_record(&mut self.record).map_err(|e| {
                self.sheet.error(
                    e.position().map(csv::Position::line),
                    None,
                    format!("cannot parse the {what}: {e}"),
                )
            })?;
            if !more {
                return Ok(None);
            }
            let offset = self.sheet.table.0 + self.record.position().map_or(0, csv::Position::byte);
            // Blank records move the line count on too, so that a run of
            // them does not keep its bytes.
            let line = lock(&self.window).line_at(offset);
            if is_blank(&self.record) {
                continue;
            }
            return Ok(Some(line));
        }
    }

    /// The header record (the first that is not blank) and its line.
    pub fn header(&mut self) -> Result<(csv::ByteRecord, u64), SheetError> {
        match self.next_record("header")? {
            Some(line) => Ok((self.record.clone(), line)),
            None => Err(self.sheet.error(None, None, EMPTY.into())),
        }
    }

    /// The next row as a task; `None` after the last.
    pub fn next_task(&mut self) -> Result<Option<NewTask>, SheetError> {
        let Some(line) = self.next_record("row")? else {
            return Ok(None);
        };
        let sheet = self.sheet;
        let err = |line: Option<u64>, column: Option<&str>, message: String| {
            sheet.error(line, column, message)
        };
        let values = row_values(&self.record, line, &sheet.column_info, sheet.width, &err)?;
        self.rows += 1;
        let id = match &sheet.source {
            ids::IdSource::RowNumber => self.rows.to_string(),
            ids::IdSource::Columns(list) => ids::join(list, &values),
        };
        check_id(&id, line, &sheet.id_column, &err)?;
        let env = sheet
            .env_names
            .iter()
            .zip(&values)
            .map(|(k, v)| (k.clone(), (*v).to_owned()))
            .collect();
        Ok(Some(NewTask {
            task_id: id,
            line,
            env,
        }))
    }

    /// Reads to the end of the file; the SHA-256 of all of it, hex.
    pub fn finish(mut self) -> Result<String, SheetError> {
        let csv = self.csv.take().expect("finish is called once");
        csv.into_inner()
            .into_inner()
            .finish()
            .map_err(|e| self.sheet.error(None, None, format!("cannot read it: {e}")))
    }
}

/// The rows of a sheet, read again ([`Sheet::rows`]).
pub struct Rows<'a> {
    pub(super) sheet: &'a Sheet,
    pub(super) reader: Option<RowReader<'a>>,
    pub(super) index: usize,
}

impl Rows<'_> {
    fn changed(&mut self, line: Option<u64>) -> SheetError {
        self.reader = None;
        self.sheet.error(
            line,
            None,
            "the sheet changed after it was checked; rows before this one were loaded, none after; \
             load it again once nothing writes to it"
                .into(),
        )
    }
}

/// A 16-byte hash of a row as a task: its id and values.
pub(super) fn row_hash(task: &NewTask) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(task.task_id.as_bytes());
    for (k, v) in &task.env {
        h.update(b"\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    h.digest128()
}

impl Iterator for Rows<'_> {
    type Item = Result<NewTask, SheetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let reader = self.reader.as_mut()?;
        match reader.next_task() {
            Ok(Some(task)) => {
                let checked = &self.sheet.row_hashes;
                if !checked.is_empty() && checked.get(self.index) != Some(&row_hash(&task)) {
                    return Some(Err(self.changed(Some(task.line))));
                }
                self.index += 1;
                Some(Ok(task))
            }
            Err(e) => {
                self.reader = None;
                Some(Err(e))
            }
            Ok(None)
                if !self.sheet.row_hashes.is_empty()
                    && self.index < self.sheet.row_hashes.len() =>
            {
                Some(Err(self.changed(None)))
            }
            Ok(None) => {
                let reader = self.reader.take()?;
                match reader.finish() {
                    Ok(sha) if self.sheet.sha256.is_empty() || sha == self.sheet.sha256 => None,
                    Ok(_) => Some(Err(self.sheet.error(
                        None,
                        None,
                        "changed while it was being read; load it again once nothing writes to it"
                            .into(),
                    ))),
                    Err(e) => Some(Err(e)),
                }
            }
        }
    }
}
