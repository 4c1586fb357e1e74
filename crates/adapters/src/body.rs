//! Message bodies as adapters see them: up to [`BODY_IN_MEMORY_MAX_BYTES`]
//! a body is held in memory; a larger one never is — a receive adapter hands it over as
//! the file it holds claimed, the engine stores it in chunks, and a send adapter reads it
//! back one chunk at a time.

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// Bodies up to this size are held in memory; larger ones are streamed (the MessageBox
/// stores them in chunks of this size).
pub const BODY_IN_MEMORY_MAX_BYTES: u64 = 1024 * 1024;

/// The stored chunks of a large body, read in order by a send adapter (implemented by the
/// host over the MessageBox).
#[async_trait]
pub trait ChunkSource: Send + Sync {
    /// The body's length in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Chunk `index` (0-based), `None` after the last one.
    async fn chunk(&self, index: u64) -> Result<Option<Bytes>, String>;
}

/// A message body.
#[derive(Clone)]
pub enum Body {
    /// Held in memory (at most [`BODY_IN_MEMORY_MAX_BYTES`] as received; any size in tests).
    Bytes(Bytes),
    /// A file of `len` bytes that the receive adapter holds (claimed) until it acknowledges
    /// the message; the engine reads it in chunks while it publishes.
    File { path: PathBuf, len: u64 },
    /// Stored in chunks; read one at a time as it is sent.
    Chunks(Arc<dyn ChunkSource>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(b) => write!(f, "Body::Bytes({} bytes)", b.len()),
            Body::File { path, len } => write!(f, "Body::File({}, {len} bytes)", path.display()),
            Body::Chunks(c) => write!(f, "Body::Chunks({} bytes)", c.len()),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Bytes(b)
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::Bytes(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::Bytes(Bytes::from(s))
    }
}

impl Body {
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
            Body::Chunks(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of a body held in memory.
    pub fn in_memory(&self) -> Option<&Bytes> {
        match self {
            Body::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The whole body in memory (for what must see all of it at once: a `json` or `xml`
    /// receive pipeline, an endpoint that takes no stream).
    pub async fn to_bytes(&self) -> Result<Bytes, String> {
        match self {
            Body::Bytes(b) => Ok(b.clone()),
            Body::File { path, len } => {
                let data = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                if data.len() as u64 != *len {
                    return Err(format!(
                        "{} is {} bytes, not the {len} it had when it was taken: changed while received",
                        path.display(),
                        data.len()
                    ));
                }
                Ok(Bytes::from(data))
            }
            Body::Chunks(c) => {
                let mut all = Vec::with_capacity(usize::try_from(c.len()).unwrap_or(0));
                let mut index = 0;
                while let Some(chunk) = c.chunk(index).await? {
                    all.extend_from_slice(&chunk);
                    index += 1;
                }
                Ok(Bytes::from(all))
            }
        }
    }

    /// Writes the body to `w` one piece at a time; never holds more than one chunk of a
    /// large body. Blocking: call it on a blocking thread of the Tokio runtime
    /// (`spawn_blocking`), which it uses to read stored chunks.
    pub fn write_blocking(&self, w: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Body::Bytes(b) => w.write_all(b),
            Body::File { path, len } => {
                let f = std::fs::File::open(path)?;
                let copied = std::io::copy(&mut f.take(*len), w)?;
                if copied != *len {
                    return Err(std::io::Error::other(format!(
                        "{} ended after {copied} of {len} bytes",
                        path.display()
                    )));
                }
                Ok(())
            }
            Body::Chunks(c) => {
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|e| std::io::Error::other(format!("reading stored chunks: {e}")))?;
                let mut index = 0;
                let mut written = 0u64;
                while let Some(chunk) = runtime
                    .block_on(c.chunk(index))
                    .map_err(std::io::Error::other)?
                {
                    w.write_all(&chunk)?;
                    written += chunk.len() as u64;
                    index += 1;
                }
                if written != c.len() {
                    return Err(std::io::Error::other(format!(
                        "the stored body ended after {written} of {} bytes",
                        c.len()
                    )));
                }
                Ok(())
            }
        }
    }
}
