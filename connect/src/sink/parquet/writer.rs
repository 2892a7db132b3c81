//! File I/O of the Parquet sink behind [`Storage`], so an object store (`object_store`'s
//! multipart upload + copy, where a "rename" is a put-if-absent) can replace the local
//! directory later without touching the commit protocol. Paths are relative to the sink's
//! `path`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use ::parquet::arrow::ArrowWriter;
use ::parquet::file::properties::WriterProperties;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

/// Bytes buffered in front of a data file (ArrowWriter writes page by page). Small: it is
/// allocated per open file (up to `parquet.max.open.files`), outside the row-group bound.
const WRITE_BUF_BYTES: usize = 64 * 1024;

/// A file being written that can be made durable.
pub(crate) trait DurableWrite: Write + Send {
    /// Writes out what is buffered and fsyncs the data.
    fn sync(&mut self) -> io::Result<()>;
}

/// Where files go.
pub(crate) trait Storage: Send + Sync {
    /// Creates (truncating) `path`, creating its directories.
    fn create(&self, path: &Path) -> io::Result<Box<dyn DurableWrite>>;
    /// Atomically renames `from` to `to` (replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Removes a file; a missing one is fine.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The whole small file, or `None` when missing.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Every file under `dir` (recursively, relative paths); a missing `dir` is empty.
    fn list_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// A local directory.
#[derive(Debug, Clone)]
pub(crate) struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: PathBuf) -> LocalStorage {
        LocalStorage { root }
    }
}

struct LocalFile(BufWriter<File>);

impl Write for LocalFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl DurableWrite for LocalFile {
    fn sync(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.0.get_ref().sync_all()
    }
}

impl Storage for LocalStorage {
    fn create(&self, path: &Path) -> io::Result<Box<dyn DurableWrite>> {
        let full = self.root.join(path);
        if let Some(dir) = full.parent() {
            fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new().create(true).write(true).truncate(true).open(full)?;
        Ok(Box::new(LocalFile(BufWriter::with_capacity(WRITE_BUF_BYTES, f))))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.root.join(from), self.root.join(to))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(self.root.join(dir))?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        self.root.join(path).exists()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(self.root.join(path)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.root.join(path)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = match fs::read_dir(self.root.join(&d)) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let rel = d.join(entry.file_name());
                if entry.file_type()?.is_dir() {
                    stack.push(rel);
                } else {
                    out.push(rel);
                }
            }
        }
        Ok(out)
    }
}

/// One open data file: rows go to a temp file renamed at the group's commit.
pub(crate) struct OpenFile {
    pub writer: ArrowWriter<Box<dyn DurableWrite>>,
    /// The hidden name written to.
    pub temp: PathBuf,
    /// The `.parquet` name it gets at commit.
    pub target: PathBuf,
    pub rows: u64,
    /// The schema of its rows.
    pub schema: SchemaRef,
}

impl OpenFile {
    pub fn create(
        storage: &dyn Storage,
        temp: PathBuf,
        target: PathBuf,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<OpenFile, String> {
        let out = storage.create(&temp).map_err(|e| format!("creating {}: {e}", temp.display()))?;
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
        Ok(OpenFile { writer, temp, target, rows: 0, schema })
    }

    pub fn write(&mut self, batch: &RecordBatch, row_group_bytes: usize) -> Result<(), String> {
        self.writer.write(batch).map_err(|e| e.to_string())?;
        self.rows += batch.num_rows() as u64;
        if self.writer.in_progress_size() >= row_group_bytes {
            self.writer.flush().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Writes the footer and fsyncs; the file is then complete under its temp name.
    pub fn finish(self) -> Result<(PathBuf, PathBuf), String> {
        let mut out = self.writer.into_inner().map_err(|e| format!("closing {}: {e}", self.temp.display()))?;
        out.sync().map_err(|e| format!("syncing {}: {e}", self.temp.display()))?;
        Ok((self.temp, self.target))
    }
}
