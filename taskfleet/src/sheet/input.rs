//! Where a sheet's bytes come from, and reading them as a stream.
//!
//! A sheet is read more than once (validated, then loaded), never held in
//! memory: [`SheetInput`] opens it again for each pass. [`Tracked`] sees
//! every byte go by, hashing them (the sheet's SHA-256) and keeping only
//! the bytes the CSV reader has read ahead of the last record whose line
//! number was asked for, so that line numbers stay exact (CRLF included)
//! in bounded memory.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// A sheet's bytes: a file, read again for each pass, or bytes in memory.
#[derive(Debug, Clone)]
pub enum SheetInput {
    /// A file. Standard input and S3 objects are written to a temporary
    /// file first, so that they can be read twice.
    File(PathBuf),
    /// Bytes already in memory (small sheets, tests).
    Bytes(Arc<[u8]>),
}

impl SheetInput {
    /// A fresh reader from the first byte.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            SheetInput::File(path) => Box::new(std::fs::File::open(path)?),
            SheetInput::Bytes(bytes) => Box::new(io::Cursor::new(Arc::clone(bytes))),
        })
    }
}

/// Line numbers from byte offsets, over the bytes read but not yet passed.
#[derive(Debug)]
pub struct Window {
    /// Offset of `bytes[0]` in the file.
    base: u64,
    bytes: Vec<u8>,
    /// The line `base` is on.
    line: u64,
    /// Whether read bytes are kept (off past the table).
    keep: bool,
}

impl Window {
    /// The line the record at byte `offset` starts on. The `csv` crate's
    /// own line count lags behind on CRLF files, so lines are counted here
    /// from the record's byte offset, skipping the line break it may point
    /// at. Offsets only go forward.
    pub fn line_at(&mut self, offset: u64) -> u64 {
        let Some(target) = offset.checked_sub(self.base) else {
            return self.line;
        };
        let mut target = usize::try_from(target).unwrap_or(usize::MAX);
        target = target.min(self.bytes.len());
        while target < self.bytes.len() && matches!(self.bytes[target], b'\r' | b'\n') {
            target += 1;
        }
        self.line += self.bytes[..target].iter().filter(|&&b| b == b'\n').count() as u64;
        self.bytes.drain(..target);
        self.base += target as u64;
        self.line
    }
}

/// A reader that hashes what it reads and feeds a [`Window`].
pub struct Tracked {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    window: Arc<Mutex<Window>>,
}

impl Tracked {
    /// Wraps `inner`, which starts at byte 0 of the file.
    pub fn new(inner: Box<dyn Read + Send>) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            window: Arc::new(Mutex::new(Window {
                base: 0,
                bytes: Vec::new(),
                line: 1,
                keep: true,
            })),
        }
    }

    /// The shared line counter.
    pub fn window(&self) -> Arc<Mutex<Window>> {
        Arc::clone(&self.window)
    }

    /// Reads `n` bytes and drops them (what comes before the table).
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        io::copy(&mut self.by_ref().take(n), &mut io::sink())?;
        lock(&self.window).line_at(n);
        Ok(())
    }

    /// Reads the rest of the file and returns its SHA-256, hex.
    pub fn finish(mut self) -> io::Result<String> {
        lock(&self.window).keep = false;
        io::copy(&mut self.by_ref(), &mut io::sink())?;
        Ok(crate::fleet::hex(&self.hasher.finalize()))
    }
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        let mut window = lock(&self.window);
        if window.keep {
            window.bytes.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// The window, whatever a panicking holder left (it holds only counts).
pub fn lock(window: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    window.lock().unwrap_or_else(PoisonError::into_inner)
}
