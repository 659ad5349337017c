//! The office's attachments: photos, short clips, voice notes and documents uploaded over HTTP,
//! stored content-addressed by SHA-256 in one directory (`<data_dir>/attachments`) and streamed
//! back.
//!
//! The directory holds:
//! - `<sha256hex>`: the bytes, written once and never modified;
//! - `<sha256hex>.json`: its [`AttachmentMeta`] (content type, size, uploader, time);
//! - `.upload-<random>`: a write in progress (an upload or a sidecar).
//!
//! Every write is atomic. An [`Upload`] streams into a temporary file while hashing; only
//! [`Upload::finish`] — the body complete, within the limit, matching the hash the client
//! announced — fsyncs it and renames it to its hash. The sidecar is written (temporary file,
//! fsync, rename) *before* the data, so a data file always has its sidecar. Bytes already stored
//! are not stored twice: the second upload's temporary file is dropped. An [`Upload`] dropped
//! before it finished (limit exceeded, hash mismatch, client gone, handler cancelled) removes its
//! temporary file; temporary files a crash left behind are removed when the store opens, once
//! older than [`LEFTOVER_MAX_AGE`].
//!
//! What the store accepts is bounded by its [`Limits`], checked before a byte is written when the
//! client declared a length and again as the bytes come:
//! - the size of one attachment;
//! - a quota of bytes stored per uploader and one for the whole store (an attachment counts for
//!   its first uploader; bytes in flight count as reserved, a declared length reserved at once);
//! - a free-space floor on the file system (statvfs): an upload that would take free space below
//!   it is refused, so that the office store (SQLite, same data dir) always has room. Free space
//!   is measured every [`SPACE_CHECK`] bytes of an upload, so concurrent uploads may overshoot
//!   the floor by at most `max_uploads × 2 × SPACE_CHECK` bytes;
//! - how many uploads run at once, per uploader and in all;
//! - the pace of a body: [`Limits::body_deadline`] (the HTTP shell times the body out).
//!
//! This module knows nothing of HTTP or tokens: `http` authenticates, authorises and maps
//! [`AttachmentError`] to statuses.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use signaling::ids::Subject;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};

/// Content types accepted for attachments (compared without parameters, case-insensitively).
pub const ALLOWED_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/webp",
    "video/mp4",
    "video/webm",
    "audio/ogg",
    "application/pdf",
];

/// Temporary files a crash left behind are removed at open once older than this.
pub const LEFTOVER_MAX_AGE: Duration = Duration::from_secs(3600);

/// Prefix of temporary files in the store directory.
const TEMP_PREFIX: &str = ".upload-";

/// Size of the chunks an attachment is read back in.
const READ_CHUNK: usize = 64 * 1024;

/// Writes are gathered into blocks of this size (each write to a tokio file is a blocking-pool
/// task; the chunks of an HTTP body are often small).
const WRITE_BUFFER: usize = 256 * 1024;

/// An upload measures the file system's free space again after this many bytes.
pub const SPACE_CHECK: u64 = WRITE_BUFFER as u64;

/// What the store accepts. [`Limits::default`] is the node's default (`[office]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest attachment, bytes.
    pub max_bytes: u64,
    /// Bytes stored in all (attachments stored once, whoever uploaded them).
    pub quota_bytes: u64,
    /// Bytes stored per uploader (the first uploader of an attachment).
    pub subject_quota_bytes: u64,
    /// Free-space floor, bytes: the floor is the smaller of this and `min_free_percent`.
    pub min_free_bytes: u64,
    /// Free-space floor, percent of the file system's size.
    pub min_free_percent: f64,
    /// Uploads in progress at once, in all.
    pub max_uploads: usize,
    /// Uploads in progress at once per uploader.
    pub max_uploads_per_subject: usize,
    /// A body that sends nothing for this long is timed out.
    pub idle_timeout: Duration,
    /// After `idle_timeout`, a body must have averaged at least this many bytes per second since
    /// it began.
    pub min_rate_bytes_per_sec: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 25 * 1024 * 1024,
            quota_bytes: 10 * 1024 * 1024 * 1024,
            subject_quota_bytes: 1024 * 1024 * 1024,
            min_free_bytes: 256 * 1024 * 1024,
            min_free_percent: 2.0,
            max_uploads: 32,
            max_uploads_per_subject: 4,
            idle_timeout: Duration::from_secs(30),
            min_rate_bytes_per_sec: 1024,
        }
    }
}

impl Limits {
    /// The free-space floor on a file system of `fs_bytes`.
    pub fn floor(&self, fs_bytes: u64) -> u64 {
        let pct = self.min_free_percent.clamp(0.0, 100.0);
        let by_pct = (fs_bytes as f64 * pct / 100.0) as u64;
        self.min_free_bytes.min(by_pct)
    }

    /// When a body that began at `started`, last sent bytes at `last` and has sent `received`
    /// bytes in all times out unless more comes: `idle_timeout` after `last`, and no later than
    /// the moment its average since `started` (after a grace of `idle_timeout`) falls below
    /// `min_rate_bytes_per_sec`.
    pub fn body_deadline(&self, started: Instant, last: Instant, received: u64) -> Instant {
        let idle = last + self.idle_timeout;
        if self.min_rate_bytes_per_sec == 0 {
            return idle;
        }
        let secs = received as f64 / self.min_rate_bytes_per_sec as f64;
        let paced = started + self.idle_timeout + Duration::from_secs_f64(secs.min(1e9));
        idle.min(paced)
    }
}

/// Whose limit an upload ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The uploader's own.
    Subject,
    /// The whole store's (every uploader together).
    Store,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Subject => "per uploader",
            Scope::Store => "for the node",
        })
    }
}

/// The canonical form of an allowed `Content-Type` value (`image/JPEG; q=1` → `image/jpeg`), or
/// `None` when the type is not accepted.
pub fn content_type(raw: &str) -> Option<&'static str> {
    let essence = raw.split(';').next().unwrap_or("").trim();
    ALLOWED_TYPES
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(essence))
}

/// An attachment's id: the SHA-256 of its bytes, written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttachmentId([u8; 32]);

impl AttachmentId {
    /// Parses exactly 64 lowercase hex characters.
    pub fn parse(s: &str) -> Result<AttachmentId, AttachmentError> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(AttachmentError::BadId);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| AttachmentError::BadId)?;
        Ok(AttachmentId(out))
    }

    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> AttachmentId {
        AttachmentId(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for AttachmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for AttachmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttachmentId({})", self.hex())
    }
}

impl Serialize for AttachmentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for AttachmentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AttachmentId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What the sidecar `<sha256hex>.json` records about an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    /// The SHA-256 of the bytes.
    pub sha256: AttachmentId,
    /// One of [`ALLOWED_TYPES`].
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Token subject of the first uploader.
    pub uploader: Subject,
    /// When it was first stored, Unix milliseconds.
    pub uploaded_unix_ms: u64,
}

/// Why an attachment could not be stored or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The body is larger than the store accepts.
    #[error("attachment larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: u64,
    },
    /// Storing it would exceed a quota of bytes stored.
    #[error("attachment quota {scope} of {limit} bytes would be exceeded ({used} bytes used)")]
    QuotaExceeded {
        /// Whose quota.
        scope: Scope,
        /// The quota, bytes.
        limit: u64,
        /// Bytes stored and reserved before this upload.
        used: u64,
    },
    /// Storing it would take the file system's free space below the floor.
    #[error("the node keeps {floor} bytes free for its office store; {free} bytes are free")]
    LowOnSpace {
        /// The floor, bytes.
        floor: u64,
        /// Free bytes now.
        free: u64,
    },
    /// Too many uploads are in progress.
    #[error("{limit} uploads at once {scope} are in progress; retry when one has finished")]
    TooManyUploads {
        /// Whose cap.
        scope: Scope,
        /// The cap.
        limit: usize,
    },
    /// The bytes do not hash to what the client announced.
    #[error("the body's SHA-256 is {actual}, not the announced {expected}")]
    HashMismatch {
        /// Announced by the client.
        expected: AttachmentId,
        /// Computed over the body.
        actual: AttachmentId,
    },
    /// An id that is not 64 lowercase hex characters.
    #[error("an attachment id is 64 lowercase hex characters (its SHA-256)")]
    BadId,
    /// The file system failed.
    #[error("attachment store: {0}")]
    Io(#[from] io::Error),
}

/// The result of a finished upload.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The attachment as stored (for bytes stored before: the first upload's record).
    pub meta: AttachmentMeta,
    /// False when the same bytes were already stored and this upload was dropped.
    pub created: bool,
}

/// An attachment opened for reading.
#[derive(Debug)]
pub struct Attachment {
    /// Its record.
    pub meta: AttachmentMeta,
    /// The open data file.
    pub file: tokio::fs::File,
}

impl Attachment {
    /// The bytes as a stream of chunks, for a streaming response body.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(Some(self.file), |file| async move {
            let mut file = file?;
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.freeze()), Some(file))),
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

/// Bytes stored and reserved, and uploads in progress, per uploader and in all.
#[derive(Debug, Default)]
struct Usage {
    stored: u64,
    stored_by: HashMap<Subject, u64>,
    reserved: u64,
    reserved_by: HashMap<Subject, u64>,
    uploads: usize,
    uploads_by: HashMap<Subject, usize>,
}

impl Usage {
    fn used_by(&self, who: &Subject) -> u64 {
        self.stored_by.get(who).copied().unwrap_or(0)
            + self.reserved_by.get(who).copied().unwrap_or(0)
    }

    /// Whether `more` bytes may be reserved for `who`.
    fn check_quota(
        &self,
        limits: &Limits,
        who: &Subject,
        more: u64,
    ) -> Result<(), AttachmentError> {
        let mine = self.used_by(who);
        if mine.saturating_add(more) > limits.subject_quota_bytes {
            return Err(AttachmentError::QuotaExceeded {
                scope: Scope::Subject,
                limit: limits.subject_quota_bytes,
                used: mine,
            });
        }
        let all = self.stored + self.reserved;
        if all.saturating_add(more) > limits.quota_bytes {
            return Err(AttachmentError::QuotaExceeded {
                scope: Scope::Store,
                limit: limits.quota_bytes,
                used: all,
            });
        }
        Ok(())
    }

    fn reserve(&mut self, who: &Subject, more: u64) {
        self.reserved += more;
        *self.reserved_by.entry(who.clone()).or_default() += more;
    }

    fn release(&mut self, who: &Subject, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
        if let Some(r) = self.reserved_by.get_mut(who) {
            *r = r.saturating_sub(bytes);
            if *r == 0 {
                self.reserved_by.remove(who);
            }
        }
    }

    fn add_stored(&mut self, who: Option<&Subject>, bytes: u64) {
        self.stored += bytes;
        if let Some(who) = who {
            *self.stored_by.entry(who.clone()).or_default() += bytes;
        }
    }
}

fn lock(usage: &Mutex<Usage>) -> MutexGuard<'_, Usage> {
    // The counters stay consistent whatever panicked while holding the lock.
    usage.lock().unwrap_or_else(|p| p.into_inner())
}

/// An upload's place among those in progress and its reservation; given back on drop.
#[derive(Debug)]
struct Slot {
    usage: Arc<Mutex<Usage>>,
    who: Subject,
    reserved: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut u = lock(&self.usage);
        u.release(&self.who, self.reserved);
        u.uploads = u.uploads.saturating_sub(1);
        if let Some(n) = u.uploads_by.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                u.uploads_by.remove(&self.who);
            }
        }
    }
}

/// Free and total bytes of the file system holding `dir`, as an unprivileged writer sees them.
pub fn fs_space(dir: &Path) -> io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    let unit = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    Ok((
        st.f_bavail.saturating_mul(unit),
        st.f_blocks.saturating_mul(unit),
    ))
}

/// Refuses when writing `more` bytes to `dir` would leave less than the floor free.
fn check_space(dir: &Path, limits: &Limits, more: u64) -> Result<(), AttachmentError> {
    let (free, total) = fs_space(dir)?;
    space_verdict(limits, free, total, more)
}

/// Whether `more` bytes fit above the floor with `free` of `total` bytes free.
fn space_verdict(limits: &Limits, free: u64, total: u64, more: u64) -> Result<(), AttachmentError> {
    let floor = limits.floor(total);
    if free < floor.saturating_add(more) {
        return Err(AttachmentError::LowOnSpace { floor, free });
    }
    Ok(())
}

/// The content-addressed store in one directory.
#[derive(Debug)]
pub struct AttachmentStore {
    dir: PathBuf,
    limits: Limits,
    usage: Arc<Mutex<Usage>>,
}

impl AttachmentStore {
    /// Opens (creating it if needed) the store in `dir` with `limits`, removes temporary files
    /// older than [`LEFTOVER_MAX_AGE`] and counts what is stored (per uploader, from the
    /// sidecars). Blocking; call at start.
    pub fn open(dir: impl Into<PathBuf>, limits: Limits) -> io::Result<AttachmentStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let removed = remove_leftovers(&dir, SystemTime::now(), LEFTOVER_MAX_AGE)?;
        if removed > 0 {
            tracing::warn!(removed, dir = %dir.display(), "removed unfinished uploads left by an earlier run");
        }
        let usage = count_stored(&dir)?;
        tracing::debug!(
            stored = usage.stored,
            uploaders = usage.stored_by.len(),
            "attachment store opened"
        );
        Ok(AttachmentStore {
            dir,
            limits,
            usage: Arc::new(Mutex::new(usage)),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Largest accepted attachment, bytes.
    pub fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    /// What the store accepts.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes stored in all, and by `who`.
    pub fn stored_bytes(&self, who: &Subject) -> (u64, u64) {
        let u = lock(&self.usage);
        (u.stored, u.stored_by.get(who).copied().unwrap_or(0))
    }

    /// Starts an upload by `uploader` of `declared` bytes (the `Content-Length`, when known): a
    /// new temporary file in the store directory. Refused at once, before anything is written,
    /// when too many uploads are in progress or the declared length does not fit the size limit,
    /// a quota or the free space above the floor.
    pub async fn begin(
        &self,
        uploader: &Subject,
        declared: Option<u64>,
    ) -> Result<Upload, AttachmentError> {
        let limit = self.limits.max_bytes;
        if declared.is_some_and(|n| n > limit) {
            return Err(AttachmentError::TooLarge { limit });
        }
        let declared = declared.unwrap_or(0);
        check_space(&self.dir, &self.limits, declared)?;
        let slot = {
            let mut u = lock(&self.usage);
            if u.uploads >= self.limits.max_uploads {
                return Err(AttachmentError::TooManyUploads {
                    scope: Scope::Store,
                    limit: self.limits.max_uploads,
                });
            }
            let mine = u.uploads_by.get(uploader).copied().unwrap_or(0);
            if mine >= self.limits.max_uploads_per_subject {
                return Err(AttachmentError::TooManyUploads {
                    scope: Scope::Subject,
                    limit: self.limits.max_uploads_per_subject,
                });
            }
            u.check_quota(&self.limits, uploader, declared)?;
            u.reserve(uploader, declared);
            u.uploads += 1;
            *u.uploads_by.entry(uploader.clone()).or_default() += 1;
            Slot {
                usage: self.usage.clone(),
                who: uploader.clone(),
                reserved: declared,
            }
        };
        let (temp, file) = create_temp(&self.dir).await?;
        Ok(Upload {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            temp,
            dir: self.dir.clone(),
            hasher: Sha256::new(),
            size: 0,
            limits: self.limits.clone(),
            next_space_check: SPACE_CHECK,
            slot,
            done: false,
        })
    }

    /// Opens a stored attachment; `None` when there is none with that id.
    pub async fn open_attachment(
        &self,
        id: &AttachmentId,
    ) -> Result<Option<Attachment>, AttachmentError> {
        let path = self.dir.join(id.hex());
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata().await?.len();
        let meta = match read_meta(&self.dir, id).await? {
            // The data file is the truth about the size.
            Some(meta) => AttachmentMeta { size, ..meta },
            // Not made by this module; serve the bytes as what is known of them.
            None => AttachmentMeta {
                sha256: *id,
                content_type: "application/octet-stream".into(),
                size,
                uploader: "unknown".parse().map_err(io::Error::other)?,
                uploaded_unix_ms: 0,
            },
        };
        Ok(Some(Attachment { meta, file }))
    }
}

/// An upload in progress. Dropping it before [`Upload::finish`] removes its temporary file.
#[derive(Debug)]
pub struct Upload {
    file: Option<BufWriter<tokio::fs::File>>,
    temp: PathBuf,
    dir: PathBuf,
    hasher: Sha256,
    size: u64,
    limits: Limits,
    /// Free space is measured again once `size` reaches this.
    next_space_check: u64,
    slot: Slot,
    done: bool,
}

impl Upload {
    /// Appends a chunk of the body. Past the size limit it fails with
    /// [`AttachmentError::TooLarge`], past a quota with [`AttachmentError::QuotaExceeded`], below
    /// the free-space floor with [`AttachmentError::LowOnSpace`], and writes nothing more; drop
    /// the upload then.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), AttachmentError> {
        let size = self.size + chunk.len() as u64;
        if size > self.limits.max_bytes {
            return Err(AttachmentError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        if size > self.slot.reserved {
            let more = size - self.slot.reserved;
            let mut u = lock(&self.slot.usage);
            u.check_quota(&self.limits, &self.slot.who, more)?;
            u.reserve(&self.slot.who, more);
            drop(u);
            self.slot.reserved = size;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("upload already closed"))?;
        if size >= self.next_space_check {
            // What is still to reach the disk: the buffer, this chunk and the bytes until the
            // next check.
            let pending = (file.buffer().len() + chunk.len()) as u64 + SPACE_CHECK;
            check_space(&self.dir, &self.limits, pending)?;
            self.next_space_check = size + SPACE_CHECK;
        }
        file.write_all(chunk).await?;
        self.hasher.update(chunk);
        self.size = size;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Completes the upload: checks the hash against `expected` (when given), makes the bytes
    /// durable and moves them into place under their hash, with a sidecar naming
    /// `content_type`, `uploader` and `now_ms`. When the bytes are already stored, the upload is
    /// dropped and the stored record returned.
    pub async fn finish(
        mut self,
        expected: Option<AttachmentId>,
        content_type: &str,
        uploader: Subject,
        now_ms: u64,
    ) -> Result<Stored, AttachmentError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("upload already closed"))?;
        file.flush().await?;
        let file = file.into_inner();
        let actual = AttachmentId(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(expected) = expected {
            if expected != actual {
                return Err(AttachmentError::HashMismatch { expected, actual });
            }
        }
        let data = self.dir.join(actual.hex());
        if tokio::fs::try_exists(&data).await? {
            drop(file);
            tokio::fs::remove_file(&self.temp).await?;
            self.done = true;
            let meta = match read_meta(&self.dir, &actual).await? {
                Some(m) => m,
                // A data file without a usable sidecar is not made by this module, but repair it
                // rather than serve it untyped forever.
                None => {
                    let meta = self.meta(actual, content_type, uploader, now_ms);
                    write_meta(&self.dir, &meta).await?;
                    meta
                }
            };
            return Ok(Stored {
                meta,
                created: false,
            });
        }
        file.sync_all().await?;
        drop(file);
        let meta = self.meta(actual, content_type, uploader, now_ms);
        write_meta(&self.dir, &meta).await?;
        tokio::fs::rename(&self.temp, &data).await?;
        self.done = true;
        lock(&self.slot.usage).add_stored(Some(&meta.uploader), self.size);
        sync_dir(&self.dir).await?;
        Ok(Stored {
            meta,
            created: true,
        })
    }

    fn meta(
        &self,
        sha256: AttachmentId,
        content_type: &str,
        uploader: Subject,
        now_ms: u64,
    ) -> AttachmentMeta {
        AttachmentMeta {
            sha256,
            content_type: content_type.to_owned(),
            size: self.size,
            uploader,
            uploaded_unix_ms: now_ms,
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            // Unlinking an open file is fine on Unix: a write still in flight goes to the
            // nameless inode, freed when the handle closes.
            if let Err(e) = std::fs::remove_file(&self.temp) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, path = %self.temp.display(), "cannot remove unfinished upload");
                }
            }
        }
    }
}

/// Creates `.upload-<128 random bits>` in `dir`, never reusing a name.
async fn create_temp(dir: &Path) -> io::Result<(PathBuf, tokio::fs::File)> {
    loop {
        let path = dir.join(format!("{TEMP_PREFIX}{:032x}", rand::random::<u128>()));
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn meta_path(dir: &Path, id: &AttachmentId) -> PathBuf {
    dir.join(format!("{}.json", id.hex()))
}

/// Reads a sidecar; `None` (logged) when it is missing or unusable.
async fn read_meta(dir: &Path, id: &AttachmentId) -> io::Result<Option<AttachmentMeta>> {
    let path = meta_path(dir, id);
    match tokio::fs::read(&path).await {
        Ok(bytes) => match serde_json::from_slice::<AttachmentMeta>(&bytes) {
            Ok(m) if m.sha256 == *id => return Ok(Some(m)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "attachment sidecar names another hash")
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "unreadable attachment sidecar")
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "attachment without sidecar")
        }
        Err(e) => return Err(e),
    }
    Ok(None)
}

/// Writes a sidecar atomically (temporary file, fsync, rename).
async fn write_meta(dir: &Path, meta: &AttachmentMeta) -> io::Result<()> {
    let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let (temp, mut file) = create_temp(dir).await?;
    let result = async {
        file.write_all(&json).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&temp, meta_path(dir, &meta.sha256)).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    result
}

/// Makes renames in `dir` durable.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

/// What `dir` holds: bytes of every data file, per uploader as its sidecar names it.
fn count_stored(dir: &Path) -> io::Result<Usage> {
    let mut usage = Usage::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| AttachmentId::parse(n).ok()) else {
            continue;
        };
        let size = entry.metadata()?.len();
        let uploader = std::fs::read(meta_path(dir, &id))
            .ok()
            .and_then(|b| serde_json::from_slice::<AttachmentMeta>(&b).ok())
            .filter(|m| m.sha256 == id)
            .map(|m| m.uploader);
        usage.add_stored(uploader.as_ref(), size);
    }
    Ok(usage)
}

/// Removes temporary files in `dir` last modified more than `max_age` before `now`; returns how
/// many.
fn remove_leftovers(dir: &Path, now: SystemTime, max_age: Duration) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
        if age > max_age {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn subject(s: &str) -> Subject {
        s.parse().unwrap()
    }

    /// The default limits with another size limit.
    fn sized(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            ..Limits::default()
        }
    }

    async fn upload(
        store: &AttachmentStore,
        bytes: &[u8],
        chunk: usize,
    ) -> Result<Stored, AttachmentError> {
        let mut up = store.begin(&subject("off-1"), None).await?;
        for c in bytes.chunks(chunk.max(1)) {
            up.write(c).await?;
        }
        up.finish(None, "image/png", subject("off-1"), 1_764_171_234_567)
            .await
    }

    async fn read_back(store: &AttachmentStore, id: &AttachmentId) -> Vec<u8> {
        let att = store.open_attachment(id).await.unwrap().expect("stored");
        let mut out = Vec::new();
        let mut s = std::pin::pin!(att.into_stream());
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[test]
    fn ids_are_64_lowercase_hex() {
        let h = AttachmentId::of(b"abc");
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(AttachmentId::parse(&h.hex()).unwrap(), h);
        for bad in [
            "",
            "ba7816bf",
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ag",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0",
            "../../../../etc/passwd/../../../../../../../../../../../../../../..",
        ] {
            assert!(AttachmentId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_types_are_an_allow_list() {
        assert_eq!(content_type("image/jpeg"), Some("image/jpeg"));
        assert_eq!(content_type(" Image/JPEG ; q=1"), Some("image/jpeg"));
        assert_eq!(content_type("application/pdf"), Some("application/pdf"));
        for bad in [
            "",
            "text/html",
            "image/svg+xml",
            "application/octet-stream",
            "image/jpeg2",
        ] {
            assert_eq!(content_type(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn round_trip_at_every_chunk_size_and_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let store = AttachmentStore::open(dir.path(), sized(1 << 20)).unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let id = AttachmentId::of(&bytes);
        for (n, chunk) in [1usize, 7, 4096, 65_536, 200_000].into_iter().enumerate() {
            let stored = upload(&store, &bytes, chunk).await.unwrap();
            assert_eq!(stored.meta.sha256, id);
            assert_eq!(stored.meta.size, bytes.len() as u64);
            assert_eq!(stored.created, n == 0, "chunk {chunk}");
            assert_eq!(stored.meta.content_type, "image/png");
            assert_eq!(names(dir.path()), vec![id.hex(), format!("{id}.json")]);
        }
        assert_eq!(read_back(&store, &id).await, bytes);
        let sidecar: AttachmentMeta =
            serde_json::from_slice(&std::fs::read(meta_path(dir.path(), &id)).unwrap()).unwrap();
        assert_eq!(sidecar.uploader.as_str(), "off-1");
        assert_eq!(sidecar.uploaded_unix_ms, 1_764_171_234_567);
        assert!(store
            .open_attachment(&AttachmentId::of(b"other"))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn nothing_is_left_of_a_refused_or_abandoned_upload() {
        let dir = tempfile::tempdir().unwrap();
        let store = AttachmentStore::open(dir.path(), sized(1000)).unwrap();

        // Over the limit: refused at the chunk that crosses it; dropping removes the temp.
        let mut up = store.begin(&subject("off-1"), None).await.unwrap();
        let temp = up.temp_path().to_owned();
        assert!(temp.exists());
        up.write(&[1; 600]).await.unwrap();
        let err = up.write(&[1; 401]).await.unwrap_err();
        assert!(
            matches!(err, AttachmentError::TooLarge { limit: 1000 }),
            "{err}"
        );
        assert_eq!(up.size(), 600);
        drop(up);
        assert!(!temp.exists());

        // Exactly at the limit is fine.
        let exact = upload(&store, &[2; 1000], 333).await.unwrap();
        assert!(exact.created);

        // Hash mismatch: refused, nothing stored.
        let mut up = store.begin(&subject("off-1"), None).await.unwrap();
        up.write(b"hello").await.unwrap();
        let err = up
            .finish(
                Some(AttachmentId::of(b"world")),
                "image/png",
                subject("off-1"),
                0,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, AttachmentError::HashMismatch { .. }), "{err}");
        assert!(store
            .open_attachment(&AttachmentId::of(b"hello"))
            .await
            .unwrap()
            .is_none());

        // Abandoned mid-way (client gone).
        let mut up = store.begin(&subject("off-1"), None).await.unwrap();
        up.write(b"partial").await.unwrap();
        drop(up);

        let id = exact.meta.sha256;
        assert_eq!(names(dir.path()), vec![id.hex(), format!("{id}.json")]);
    }

    #[tokio::test]
    async fn matching_announced_hash_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let store = AttachmentStore::open(dir.path(), sized(1000)).unwrap();
        let mut up = store.begin(&subject("off-1"), None).await.unwrap();
        up.write(b"hello").await.unwrap();
        let stored = up
            .finish(
                Some(AttachmentId::of(b"hello")),
                "audio/ogg",
                subject("off-2"),
                5,
            )
            .await
            .unwrap();
        assert!(stored.created);
        assert_eq!(
            read_back(&store, &AttachmentId::of(b"hello")).await,
            b"hello"
        );
    }

    #[test]
    fn leftovers_older_than_an_hour_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".upload-old");
        let fresh = dir.path().join(".upload-fresh");
        let data = dir.path().join("not-a-temp");
        for p in [&old, &fresh, &data] {
            std::fs::write(p, b"x").unwrap();
        }
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for p in [&old, &data] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        AttachmentStore::open(dir.path(), sized(10)).unwrap();
        assert_eq!(names(dir.path()), vec![".upload-fresh", "not-a-temp"]);

        // The same rule in virtual time: nothing is old yet; an hour and a bit later, all is.
        let now = SystemTime::now();
        assert_eq!(
            remove_leftovers(dir.path(), now, LEFTOVER_MAX_AGE).unwrap(),
            0
        );
        assert_eq!(
            remove_leftovers(
                dir.path(),
                now + LEFTOVER_MAX_AGE + Duration::from_secs(1),
                LEFTOVER_MAX_AGE
            )
            .unwrap(),
            1
        );
        assert_eq!(names(dir.path()), vec!["not-a-temp"]);
    }

    #[tokio::test]
    async fn data_without_sidecar_is_repaired_by_the_next_upload() {
        let dir = tempfile::tempdir().unwrap();
        let store = AttachmentStore::open(dir.path(), sized(1000)).unwrap();
        let id = AttachmentId::of(b"orphan");
        std::fs::write(dir.path().join(id.hex()), b"orphan").unwrap();
        let att = store.open_attachment(&id).await.unwrap().unwrap();
        assert_eq!(att.meta.content_type, "application/octet-stream");
        assert_eq!(att.meta.size, 6);
        drop(att);
        let stored = upload(&store, b"orphan", 3).await.unwrap();
        assert!(!stored.created);
        assert_eq!(stored.meta.content_type, "image/png");
        assert_eq!(
            store
                .open_attachment(&id)
                .await
                .unwrap()
                .unwrap()
                .meta
                .content_type,
            "image/png"
        );
    }

    #[tokio::test]
    async fn quotas_count_stored_and_reserved_bytes_per_uploader_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1000,
            subject_quota_bytes: 1500,
            quota_bytes: 2500,
            ..Limits::default()
        };
        let store = AttachmentStore::open(dir.path(), limits.clone()).unwrap();
        let (a, b, c) = (subject("off-1"), subject("off-2"), subject("off-3"));
        let put = |who: Subject, fill: u8, n: usize| {
            let store = &store;
            async move {
                let mut up = store.begin(&who, Some(n as u64)).await?;
                up.write(&vec![fill; n]).await?;
                up.finish(None, "image/png", who, 0).await
            }
        };
        put(a.clone(), 1, 1000).await.unwrap();
        // The same bytes again (from another uploader) count once, for the first.
        assert!(!put(b.clone(), 1, 1000).await.unwrap().created);
        assert_eq!(store.stored_bytes(&a), (1000, 1000));
        assert_eq!(store.stored_bytes(&b), (1000, 0));
        // Declared: refused at once, nothing written.
        let err = store.begin(&a, Some(501)).await.unwrap_err();
        assert!(
            matches!(
                err,
                AttachmentError::QuotaExceeded {
                    scope: Scope::Subject,
                    limit: 1500,
                    used: 1000
                }
            ),
            "{err}"
        );
        // Undeclared: refused at the chunk that crosses the quota.
        let mut up = store.begin(&a, None).await.unwrap();
        up.write(&[2; 500]).await.unwrap();
        let err = up.write(&[2; 1]).await.unwrap_err();
        assert!(
            matches!(
                err,
                AttachmentError::QuotaExceeded {
                    scope: Scope::Subject,
                    ..
                }
            ),
            "{err}"
        );
        drop(up);
        // A reservation holds the bytes for the upload in flight, and is given back on drop.
        let held = store.begin(&b, Some(1000)).await.unwrap();
        let err = store.begin(&c, Some(600)).await.unwrap_err();
        assert!(
            matches!(
                err,
                AttachmentError::QuotaExceeded {
                    scope: Scope::Store,
                    limit: 2500,
                    used: 2000
                }
            ),
            "{err}"
        );
        drop(held);
        put(c.clone(), 3, 600).await.unwrap();
        assert_eq!(store.stored_bytes(&c), (1600, 600));
        assert_eq!(names(dir.path()).len(), 4, "{:?}", names(dir.path()));

        // Reopened, the store counts what it holds from the sidecars.
        drop(store);
        let store = AttachmentStore::open(dir.path(), limits).unwrap();
        assert_eq!(store.stored_bytes(&a), (1600, 1000));
        assert_eq!(store.stored_bytes(&c), (1600, 600));
    }

    #[tokio::test]
    async fn uploads_in_progress_are_capped_per_uploader_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_uploads: 3,
            max_uploads_per_subject: 2,
            ..Limits::default()
        };
        let store = AttachmentStore::open(dir.path(), limits).unwrap();
        let (a, b) = (subject("off-1"), subject("off-2"));
        let a1 = store.begin(&a, None).await.unwrap();
        let _a2 = store.begin(&a, None).await.unwrap();
        let err = store.begin(&a, None).await.unwrap_err();
        assert!(
            matches!(
                err,
                AttachmentError::TooManyUploads {
                    scope: Scope::Subject,
                    limit: 2
                }
            ),
            "{err}"
        );
        let _b1 = store.begin(&b, None).await.unwrap();
        let err = store.begin(&b, None).await.unwrap_err();
        assert!(
            matches!(
                err,
                AttachmentError::TooManyUploads {
                    scope: Scope::Store,
                    limit: 3
                }
            ),
            "{err}"
        );
        // A finished or dropped upload frees its place.
        drop(a1);
        let _b2 = store.begin(&b, None).await.unwrap();
        assert_eq!(names(dir.path()).len(), 3);
    }

    #[test]
    fn the_free_space_floor_refuses_what_would_go_below_it() {
        // The floor is the smaller of the bytes and the percentage.
        let l = Limits {
            min_free_bytes: 256 << 20,
            min_free_percent: 2.0,
            ..Limits::default()
        };
        assert_eq!(l.floor(1 << 30), (1u64 << 30) / 50);
        assert_eq!(l.floor(100 << 30), 256 << 20);
        let (gib, mib) = (1u64 << 30, 1u64 << 20);
        assert!(space_verdict(&l, 100 * gib, 100 * gib, 25 * mib).is_ok());
        // 300 MiB free of 100 GiB: 25 MiB more fits above the 256 MiB floor, 50 MiB does not.
        assert!(space_verdict(&l, 300 * mib, 100 * gib, 25 * mib).is_ok());
        let err = space_verdict(&l, 300 * mib, 100 * gib, 50 * mib).unwrap_err();
        assert!(
            matches!(err, AttachmentError::LowOnSpace { floor, free } if floor == 256 * mib && free == 300 * mib),
            "{err}"
        );
        // The real file system answers.
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = fs_space(dir.path()).unwrap();
        assert!(free > 0 && total >= free, "{free} of {total}");
    }

    #[test]
    fn a_body_times_out_when_idle_or_slower_than_the_minimum_rate() {
        let l = Limits {
            idle_timeout: Duration::from_secs(10),
            min_rate_bytes_per_sec: 100,
            ..Limits::default()
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Nothing yet: the idle timeout.
        assert_eq!(l.body_deadline(t0, t0, 0), t0 + s(10));
        // A fast body: idle after its last bytes.
        assert_eq!(l.body_deadline(t0, t0 + s(5), 100_000), t0 + s(15));
        // A trickle (1 byte every 2 s): the pace, not the idle timer, ends it.
        assert_eq!(
            l.body_deadline(t0, t0 + s(8), 4),
            t0 + s(10) + Duration::from_millis(40)
        );
        // No minimum rate: only idleness counts.
        let idle_only = Limits {
            min_rate_bytes_per_sec: 0,
            ..l
        };
        assert_eq!(idle_only.body_deadline(t0, t0 + s(100), 4), t0 + s(110));
    }
}
