//! Where a store's history is shipped: any object store the `object_store` crate reaches,
//! named by one URL, seen through blocking calls (the shipper and the restore run on threads
//! of their own; each target owns a small runtime for its I/O).
//!
//! - `file:///abs/dir` — a local directory (tests, NFS), created 0700;
//! - `s3://bucket/prefix` — S3 or any S3-compatible service; region, endpoint and credentials
//!   from the usual `AWS_*` variables (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP=true` for a plain-HTTP
//!   endpoint, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, …);
//! - `gs://bucket/prefix` — Google Cloud Storage (`GOOGLE_*` variables);
//! - `az://container/prefix` — Azure Blob Storage (`AZURE_*` variables).

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use silo::{Error, Result};

/// One object's name (relative to the target's prefix) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub size: u64,
}

/// A replication target.
pub struct Target {
    url: String,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.url).finish()
    }
}

impl Target {
    /// Opens the target a URL names.
    pub fn open(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| {
            Error::config(format!(
                "{url:?} is not a replication target URL ({e}); use file:///abs/dir, \
                 s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
            ))
        })?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                if parsed.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(Error::config(format!(
                        "{url}: a file:// target takes an absolute path (file:///abs/dir)"
                    )));
                }
                let path = parsed
                    .to_file_path()
                    .map_err(|()| Error::config(format!("{url}: not an absolute local path")))?;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| {
                        Error::io(
                            format!("creating the target directory {}", path.display()),
                            e,
                        )
                    })?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&path)
                    .map_err(|e| target_error(url, "opening", e))?
                    .with_automatic_cleanup(true);
                Arc::new(local)
            }
            "s3" | "s3a" => cloud(
                url,
                &parsed,
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build(),
            )?,
            "gs" => cloud(
                url,
                &parsed,
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build(),
            )?,
            "az" | "azure" | "abfs" | "abfss" => cloud(
                url,
                &parsed,
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build(),
            )?,
            other => {
                return Err(Error::config(format!(
                    "{url}: unknown replication target scheme {other:?}; use file://, s3://, \
                     gs:// or az://"
                )));
            }
        };
        Self::from_store(url, store)
    }

    /// A target on an object store configured by hand (a wrapper store, a builder's options
    /// the URL cannot carry); `name` is what messages call it.
    pub fn from_store(name: &str, store: Arc<dyn ObjectStore>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the replication runtime", e))?;
        Ok(Target {
            url: name.to_owned(),
            store,
            runtime,
        })
    }

    /// The URL it was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes `name` whole (an object appears all at once or not at all).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = ObjectPath::from(name);
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| target_error(&self.url, &format!("writing {name}"), e))
    }

    /// Writes `name` from `len` bytes that `read(buf, offset)` fills piece by piece, as one
    /// multipart upload: an object too large to hold in memory (a base) is never held whole.
    pub fn put_with(
        &self,
        name: &str,
        len: u64,
        mut read: impl FnMut(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        const PIECE: usize = 8 << 20;
        if len <= PIECE as u64 {
            let mut bytes = vec![0u8; len as usize];
            read(&mut bytes, 0)?;
            return self.put(name, bytes);
        }
        let path = ObjectPath::from(name);
        let url = &self.url;
        let fail = |e| target_error(url, &format!("writing {name}"), e);
        self.runtime.block_on(async {
            let upload = self.store.put_multipart(&path).await.map_err(fail)?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PIECE);
            let mut buf = vec![0u8; PIECE];
            let mut at = 0u64;
            while at < len {
                let n = PIECE.min((len - at) as usize);
                if let Err(e) = read(&mut buf[..n], at) {
                    writer.abort().await.ok();
                    return Err(e);
                }
                // At most two pieces in flight: memory stays bounded.
                writer.wait_for_capacity(2).await.map_err(fail)?;
                writer.write(&buf[..n]);
                at += n as u64;
            }
            writer.finish().await.map_err(fail)?;
            Ok(())
        })
    }

    /// Reads `name` whole; `None` when it does not exist.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = ObjectPath::from(name);
        let got = self.runtime.block_on(async {
            let result = self.store.get(&path).await?;
            result.bytes().await
        });
        match got {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(target_error(&self.url, &format!("reading {name}"), e)),
        }
    }

    /// Reads `name` in pieces, handing each to `f` (a large object never sits in memory
    /// whole).
    pub fn get_streaming(&self, name: &str, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let path = ObjectPath::from(name);
        let url = &self.url;
        self.runtime.block_on(async {
            let result = self
                .store
                .get(&path)
                .await
                .map_err(|e| target_error(url, &format!("reading {name}"), e))?;
            let mut stream = result.into_stream();
            while let Some(piece) = stream
                .try_next()
                .await
                .map_err(|e| target_error(url, &format!("reading {name}"), e))?
            {
                f(&piece)?;
            }
            Ok(())
        })
    }

    /// Every object under `dir/`, sorted by name.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let prefix = ObjectPath::from(dir);
        let listed: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.store.list(Some(&prefix)).try_collect())
            .map_err(|e| target_error(&self.url, &format!("listing {dir}/"), e))?;
        let mut out: Vec<Listed> = listed
            .into_iter()
            .map(|meta| Listed {
                name: meta.location.to_string(),
                size: meta.size,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes `name` (missing is fine).
    pub fn delete(&self, name: &str) -> Result<()> {
        let path = ObjectPath::from(name);
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(target_error(&self.url, &format!("removing {name}"), e)),
        }
    }
}

/// A cloud store at the URL's bucket, seen from the URL's path on.
fn cloud<S: ObjectStore>(
    url: &str,
    parsed: &url::Url,
    built: object_store::Result<S>,
) -> Result<Arc<dyn ObjectStore>> {
    let store = built.map_err(|e| target_error(url, "configuring", e))?;
    let prefix = parsed.path().trim_matches('/');
    if prefix.is_empty() {
        Ok(Arc::new(store))
    } else {
        Ok(Arc::new(PrefixStore::new(store, prefix)))
    }
}

/// An object store's error, classified: what can pass (a network failure, a throttled
/// request) is `Unavailable`, so the shipper retries it; the rest says what to fix.
fn target_error(url: &str, doing: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let message = format!("replication target {url}: {doing}: {e}");
    match e {
        E::NotFound { .. } => Error::config(message),
        E::Unauthenticated { .. } | E::PermissionDenied { .. } => Error::Unauthorized {
            message: format!("{message} (check the target's credentials)"),
        },
        E::InvalidPath { .. } | E::NotSupported { .. } | E::NotImplemented { .. } => {
            Error::config(message)
        }
        E::UnknownConfigurationKey { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            Error::config(message)
        }
        _ => Error::Unavailable { message },
    }
}
