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
//! This module knows nothing of HTTP or tokens: `http` authenticates, authorises and maps
//! [`AttachmentError`] to statuses.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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

/// The content-addressed store in one directory.
#[derive(Debug)]
pub struct AttachmentStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl AttachmentStore {
    /// Opens (creating it if needed) the store in `dir`, accepting attachments up to `max_bytes`,
    /// and removes temporary files older than [`LEFTOVER_MAX_AGE`]. Blocking; call at start.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> io::Result<AttachmentStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let removed = remove_leftovers(&dir, SystemTime::now(), LEFTOVER_MAX_AGE)?;
        if removed > 0 {
            tracing::warn!(removed, dir = %dir.display(), "removed unfinished uploads left by an earlier run");
        }
        Ok(AttachmentStore { dir, max_bytes })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Largest accepted attachment, bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Starts an upload: a new temporary file in the store directory.
    pub async fn begin(&self) -> Result<Upload, AttachmentError> {
        let (temp, file) = create_temp(&self.dir).await?;
        Ok(Upload {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            temp,
            dir: self.dir.clone(),
            hasher: Sha256::new(),
            size: 0,
            limit: self.max_bytes,
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
    limit: u64,
    done: bool,
}

impl Upload {
    /// Appends a chunk of the body. Past the limit it fails with [`AttachmentError::TooLarge`]
    /// and writes nothing more; drop the upload then.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), AttachmentError> {
        let size = self.size + chunk.len() as u64;
        if size > self.limit {
            return Err(AttachmentError::TooLarge { limit: self.limit });
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("upload already closed"))?;
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

    async fn upload(
        store: &AttachmentStore,
        bytes: &[u8],
        chunk: usize,
    ) -> Result<Stored, AttachmentError> {
        let mut up = store.begin().await?;
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
        let store = AttachmentStore::open(dir.path(), 1 << 20).unwrap();
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
        let store = AttachmentStore::open(dir.path(), 1000).unwrap();

        // Over the limit: refused at the chunk that crosses it; dropping removes the temp.
        let mut up = store.begin().await.unwrap();
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
        let mut up = store.begin().await.unwrap();
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
        let mut up = store.begin().await.unwrap();
        up.write(b"partial").await.unwrap();
        drop(up);

        let id = exact.meta.sha256;
        assert_eq!(names(dir.path()), vec![id.hex(), format!("{id}.json")]);
    }

    #[tokio::test]
    async fn matching_announced_hash_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let store = AttachmentStore::open(dir.path(), 1000).unwrap();
        let mut up = store.begin().await.unwrap();
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
        AttachmentStore::open(dir.path(), 10).unwrap();
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
        let store = AttachmentStore::open(dir.path(), 1000).unwrap();
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
}
