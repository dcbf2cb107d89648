//! Objects in an S3 bucket: AWS S3 or any S3-compatible store (Garage, Ceph,
//! R2, MinIO...). Several portal replicas share one bucket.

use std::{fmt, path::Path, time::Duration};

use anyhow::Context;
use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation},
    presigning::PresigningConfig,
    primitives::{ByteStream as SdkByteStream, Length},
    types::{CompletedMultipartUpload, CompletedPart},
};
use aws_smithy_http_client::tls;
use futures_util::{StreamExt, TryStreamExt};

use super::{ByteStream, Locked, ObjectStore};
use crate::config::Config;

/// Files up to this size go up in one PutObject; larger ones as a multipart
/// upload of parts this size (or larger, see [`part_size_for`]).
const PART_SIZE: u64 = 16 * 1024 * 1024;
/// S3 accepts at most this many parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Parts uploaded at once: bounds the memory and connections an upload takes.
const PARTS_IN_FLIGHT: usize = 4;
/// Read buffer for streaming a file into a request body.
const UPLOAD_BUFFER: usize = 256 * 1024;

/// The size of each part (the last may be smaller) when uploading `size`
/// bytes: [`PART_SIZE`], grown in whole MiB so that no more than
/// [`MAX_PARTS`] parts are needed.
fn part_size_for(size: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    PART_SIZE.max(size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB)
}

/// A bucket, with every object key under a prefix.
pub struct S3Bucket {
    client: Client,
    bucket: String,
    /// Empty, or ending in `/`.
    prefix: String,
    endpoint: Option<String>,
    /// Whether the bucket has Object Lock turned on, once asked.
    lockable: std::sync::OnceLock<bool>,
}

impl fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Bucket")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Access key id, secret and session token: from the portal's settings, or
/// else from the standard AWS environment variables (read through `env`).
fn credentials(config: &Config, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Credentials> {
    let (id, secret, token) = match (&config.s3_access_key_id, &config.s3_secret_access_key) {
        (Some(id), Some(secret)) => (id.clone(), secret.clone(), None),
        (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => (id, secret, env("AWS_SESSION_TOKEN")),
            _ => anyhow::bail!(
                "no S3 credentials: set WEIGHTGATE_S3_ACCESS_KEY_ID and WEIGHTGATE_S3_SECRET_ACCESS_KEY \
                 (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            ),
        },
        _ => anyhow::bail!(
            "set both WEIGHTGATE_S3_ACCESS_KEY_ID and WEIGHTGATE_S3_SECRET_ACCESS_KEY, or neither"
        ),
    };
    Ok(Credentials::new(id, secret, token, None, "weightgate"))
}

impl S3Bucket {
    /// A client for `bucket` as the configuration describes it. Nothing is
    /// sent until the first request.
    pub(crate) fn new(config: &Config, bucket: String, prefix: String) -> anyhow::Result<Self> {
        let credentials = credentials(config, |name| std::env::var(name).ok().filter(|v| !v.is_empty()))?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(config.s3_region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.s3_path_style)
            // Stores other than AWS reject or mishandle the checksums the SDK
            // would otherwise add to every upload and demand on every download.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.s3_endpoint {
            anyhow::ensure!(
                endpoint.starts_with("https://") || endpoint.starts_with("http://"),
                "the S3 endpoint {endpoint:?} must be an http:// or https:// URL"
            );
            builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket,
            prefix,
            endpoint: config.s3_endpoint.clone(),
            lockable: std::sync::OnceLock::new(),
        })
    }

    /// The bucket's key for a store key.
    fn object_key(&self, key: &str) -> anyhow::Result<String> {
        let plain = !key.is_empty() && key.split('/').all(|part| !matches!(part, "" | "." | ".."));
        anyhow::ensure!(plain, "invalid object key {key:?}");
        Ok(format!("{}{key}", self.prefix))
    }

    /// Whether the bucket has Object Lock turned on, asked once.
    async fn lockable(&self) -> anyhow::Result<bool> {
        if let Some(known) = self.lockable.get() {
            return Ok(*known);
        }
        let answer = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        let lockable = match answer {
            Ok(out) => out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| *e == aws_sdk_s3::types::ObjectLockEnabled::Enabled),
            // A bucket without a lock configuration, or a store that does not
            // know the request: no locks.
            Err(err)
                if err.as_service_error().is_some_and(|e| {
                    use aws_sdk_s3::error::ProvideErrorMetadata;
                    matches!(
                        e.code(),
                        Some("ObjectLockConfigurationNotFoundError" | "NotImplemented" | "InvalidRequest")
                    )
                }) =>
            {
                false
            }
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!("cannot ask {} for its object lock", self.bucket))
                    .context(super::StoreUnavailable));
            }
        };
        Ok(*self.lockable.get_or_init(|| lockable))
    }

    /// `s3://bucket/key`, for error messages.
    fn describe(&self, object_key: &str) -> String {
        format!("s3://{}/{object_key}", self.bucket)
    }

    async fn put_whole(&self, object_key: &str, source: &Path, size: u64) -> anyhow::Result<()> {
        let body = SdkByteStream::read_from()
            .path(source)
            .buffer_size(UPLOAD_BUFFER)
            .length(Length::Exact(size))
            .build()
            .await
            .with_context(|| format!("cannot read {}", source.display()))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(object_key)
            .content_length(i64::try_from(size)?)
            .body(body)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot upload {} to {}",
                    source.display(),
                    self.describe(object_key)
                )
            })?;
        Ok(())
    }

    /// Uploads the parts of `source`, at most [`PARTS_IN_FLIGHT`] at once,
    /// each streamed from its slice of the file, and completes the upload.
    async fn put_parts(
        &self,
        object_key: &str,
        upload_id: &str,
        source: &Path,
        size: u64,
    ) -> anyhow::Result<()> {
        let part_size = part_size_for(size);
        let parts: Vec<CompletedPart> = futures_util::stream::iter(0..size.div_ceil(part_size))
            .map(|index| async move {
                let offset = index * part_size;
                let length = part_size.min(size - offset);
                let number = i32::try_from(index + 1)?;
                let body = SdkByteStream::read_from()
                    .path(source)
                    .buffer_size(UPLOAD_BUFFER)
                    .offset(offset)
                    .length(Length::Exact(length))
                    .build()
                    .await
                    .with_context(|| format!("cannot read {}", source.display()))?;
                let uploaded = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(object_key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(i64::try_from(length)?)
                    .body(body)
                    .send()
                    .await
                    .with_context(|| {
                        format!(
                            "cannot upload part {number} of {} to {}",
                            source.display(),
                            self.describe(object_key)
                        )
                    })?;
                let e_tag = uploaded
                    .e_tag()
                    .with_context(|| format!("the store returned no ETag for part {number}"))?;
                anyhow::Ok(CompletedPart::builder().part_number(number).e_tag(e_tag).build())
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect()
            .await?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object_key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .with_context(|| format!("cannot complete the upload to {}", self.describe(object_key)))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Bucket {
    /// Small files go up in one PutObject, larger ones as a multipart upload
    /// that is aborted if any part fails. S3 makes either visible only once
    /// it is whole.
    async fn put_file(&self, key: &str, source: &Path) -> anyhow::Result<()> {
        let object_key = self.object_key(key)?;
        let size = tokio::fs::metadata(source)
            .await
            .with_context(|| format!("cannot read {}", source.display()))?
            .len();
        if size <= PART_SIZE {
            return self.put_whole(&object_key, source, size).await;
        }
        let started = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
            .with_context(|| format!("cannot start an upload to {}", self.describe(&object_key)))?;
        let upload_id = started
            .upload_id()
            .context("the store started a multipart upload without an id")?;
        let uploaded = self.put_parts(&object_key, upload_id, source, size).await;
        if uploaded.is_err() {
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&object_key)
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(err) = aborted {
                tracing::warn!(
                    object = %self.describe(&object_key),
                    upload_id,
                    error = %format!("{:#}", anyhow::Error::new(err)),
                    "cannot abort a failed multipart upload; its parts stay until a lifecycle rule removes them"
                );
            }
        }
        uploaded
    }

    async fn size(&self, key: &str) -> anyhow::Result<Option<u64>> {
        let object_key = self.object_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
        {
            Ok(head) => {
                let length = head
                    .content_length()
                    .with_context(|| format!("the store gave no size for {}", self.describe(&object_key)))?;
                Ok(Some(u64::try_from(length)?))
            }
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(anyhow::Error::new(err)
                .context(format!("cannot read the size of {}", self.describe(&object_key)))
                .context(super::StoreUnavailable)),
        }
    }

    /// Streams the body of a ranged GetObject as it arrives.
    async fn get_range(&self, key: &str, start: u64, end: u64) -> anyhow::Result<ByteStream> {
        let object_key = self.object_key(key)?;
        if start >= end {
            // S3 has no empty range; still refuse a missing object, as a directory does.
            self.size(key)
                .await?
                .with_context(|| format!("no object {}", self.describe(&object_key)))?;
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|err| {
                anyhow::Error::new(err)
                    .context(format!("cannot read {}", self.describe(&object_key)))
                    .context(super::StoreUnavailable)
            })?;
        let length = object.content_length().and_then(|l| u64::try_from(l).ok());
        anyhow::ensure!(
            length == Some(end - start),
            "the store answered a request for {} bytes of {} with {length:?} bytes",
            end - start,
            self.describe(&object_key)
        );
        let body = futures_util::stream::try_unfold(object.body, |mut body| async move {
            match body.next().await {
                Some(chunk) => Ok(Some((chunk.map_err(std::io::Error::other)?, body))),
                None => Ok(None),
            }
        });
        Ok(Box::pin(body))
    }

    /// One PutObject that fails if the key is taken (`If-None-Match: *`),
    /// in compliance mode until `retain_until` when the bucket has Object
    /// Lock. S3 wants a checksum with a locked object; SHA-256 is sent.
    async fn put_record(
        &self,
        key: &str,
        bytes: Vec<u8>,
        retain_until: Option<std::time::SystemTime>,
    ) -> anyhow::Result<Locked> {
        use base64::Engine;
        use sha2::Digest;
        let object_key = self.object_key(key)?;
        let lock = match retain_until {
            Some(until) if self.lockable().await? => Some(until),
            _ => None,
        };
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&bytes));
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .if_none_match("*")
            .content_type("application/json")
            .content_length(i64::try_from(bytes.len())?)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum)
            .body(SdkByteStream::from(bytes));
        if let Some(until) = lock {
            request = request
                .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::Compliance)
                .object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from(until));
        }
        let expected = request
            .get_body()
            .as_ref()
            .and_then(|b| b.bytes())
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        match request.send().await {
            Ok(_) => {}
            // Taken: by this very record when a retried request had already
            // gone through, which is fine; by anything else, refused.
            Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                let stored = self.get_record(key).await?;
                anyhow::ensure!(
                    stored.as_deref() == Some(expected.as_slice()),
                    "{} holds another record already",
                    self.describe(&object_key)
                );
            }
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!("cannot store {}", self.describe(&object_key)))
                    .context(super::StoreUnavailable));
            }
        }
        Ok(if lock.is_some() {
            Locked::Retained
        } else {
            Locked::Unlocked
        })
    }

    async fn get_record(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let object_key = self.object_key(key)?;
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!("cannot read {}", self.describe(&object_key)))
                    .context(super::StoreUnavailable));
            }
        };
        let bytes = object
            .body
            .collect()
            .await
            .with_context(|| format!("cannot read {}", self.describe(&object_key)))?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let full = self.object_key(prefix.trim_end_matches('/'))? + "/";
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| {
                anyhow::Error::new(err)
                    .context(format!("cannot list {}", self.describe(&full)))
                    .context(super::StoreUnavailable)
            })?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    keys.push(key.strip_prefix(&self.prefix).unwrap_or(key).to_owned());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn presign_get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        ttl: Duration,
        file_name: &str,
    ) -> anyhow::Result<Option<String>> {
        let object_key = self.object_key(key)?;
        let file_name: String = file_name.chars().filter(|c| !matches!(c, '"' | '\\')).collect();
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .response_content_disposition(format!("attachment; filename=\"{file_name}\""));
        if let Some((start, end)) = range {
            anyhow::ensure!(start < end, "cannot sign an empty range {start}..{end}");
            request = request.range(format!("bytes={start}-{}", end - 1));
        }
        let presigning = PresigningConfig::expires_in(ttl)
            .with_context(|| format!("cannot sign a URL that lives {}", humantime::format_duration(ttl)))?;
        let signed = request
            .presigned(presigning)
            .await
            .with_context(|| format!("cannot sign a URL for {}", self.describe(&object_key)))?;
        Ok(Some(signed.uri().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_16_mib_unless_the_file_needs_more_than_10000() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(part_size_for(40 * MIB), 16 * MIB);
        assert_eq!(part_size_for(MAX_PARTS * 16 * MIB), 16 * MIB);
        let huge = MAX_PARTS * 16 * MIB + 1;
        assert_eq!(part_size_for(huge), 17 * MIB);
        assert!(huge.div_ceil(part_size_for(huge)) <= MAX_PARTS);
    }

    #[test]
    fn credentials_come_from_settings_or_the_aws_variables() {
        let aws = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDENV".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".to_owned()),
            "AWS_SESSION_TOKEN" => Some("env-token".to_owned()),
            _ => None,
        };
        let mut config = Config::embedded("/srv/wg");
        let from_env = credentials(&config, aws).unwrap();
        assert_eq!(from_env.access_key_id(), "AKIDENV");
        assert_eq!(from_env.secret_access_key(), "env-secret");
        assert_eq!(from_env.session_token(), Some("env-token"));

        config.s3_access_key_id = Some("AKIDSET".into());
        config.s3_secret_access_key = Some("set-secret".into());
        let from_settings = credentials(&config, aws).unwrap();
        assert_eq!(from_settings.access_key_id(), "AKIDSET");
        assert_eq!(from_settings.session_token(), None);

        config.s3_secret_access_key = None;
        let half = credentials(&config, aws).unwrap_err().to_string();
        assert!(half.contains("or neither"), "{half}");

        let none = credentials(&Config::embedded("/srv/wg"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(none.contains("WEIGHTGATE_S3_ACCESS_KEY_ID"), "{none}");
    }
}
