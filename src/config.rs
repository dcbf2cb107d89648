//! Settings for every command, from flags or `WEIGHTGATE_*` environment variables.
//! The defaults run the embedded setup with nothing installed: a SQLite file, an
//! object directory and an e-mail outbox folder, all under the data directory.

use std::{fmt, net::SocketAddr, num::NonZeroU32, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};

use crate::network::TrustedProxies;

/// `burst` requests at once, then the allowance refills evenly over `per`:
/// `30/1h` allows 30 at once and one more every two minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub(crate) burst: NonZeroU32,
    pub(crate) per: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a rate: use COUNT/DURATION, e.g. 30/1h");
        let (count, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let burst: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let per = humantime::parse_duration(per.trim()).map_err(|_| bad())?;
        if per.is_zero() {
            return Err(bad());
        }
        Ok(Self { burst, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.burst, humantime::format_duration(self.per))
    }
}

/// The default retry schedule of the Standard Webhooks specification's
/// reference: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (a day and more).
pub const DEFAULT_WEBHOOK_RETRIES: &str = "5s,5m,30m,2h,5h,10h,10h";

/// A retry schedule: the waits before each retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retries(pub Vec<Duration>);

/// Parses a retry schedule: durations separated by commas.
pub fn parse_retries(text: &str) -> Result<Retries, String> {
    text.split(',')
        .map(|d| humantime::parse_duration(d.trim()).map_err(|e| format!("{d:?} is not a duration: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Retries)
}

#[derive(Args, Clone)]
#[command(next_help_heading = "Settings (each also a WEIGHTGATE_* variable)")]
pub struct Config {
    /// Directory holding the embedded database, the object store and the e-mail outbox.
    #[arg(
        long,
        env = "WEIGHTGATE_DATA_DIR",
        default_value = "weightgate-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Database URL: `sqlite://PATH` or `postgres://...`.
    /// Defaults to `sqlite://DATA_DIR/weightgate.db`.
    #[arg(long, env = "WEIGHTGATE_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Object store holding the weight files: `file://DIR` or `s3://BUCKET/PREFIX`
    /// (the prefix is optional). Defaults to `DATA_DIR/objects`.
    #[arg(long, env = "WEIGHTGATE_STORAGE_URL", global = true)]
    pub storage_url: Option<String>,

    /// Endpoint of an S3-compatible store (Garage, Ceph, R2, MinIO...), e.g.
    /// `https://s3.example.org`. Unset: AWS S3 in the region.
    #[arg(long, env = "WEIGHTGATE_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,

    /// Region of the S3 bucket, used to sign requests (most S3-compatible stores accept the default).
    #[arg(
        long,
        env = "WEIGHTGATE_S3_REGION",
        default_value = "us-east-1",
        global = true
    )]
    pub(crate) s3_region: String,

    /// Address buckets as `ENDPOINT/BUCKET/KEY` instead of `BUCKET.ENDPOINT/KEY`,
    /// as most self-hosted S3-compatible stores need.
    #[arg(
        long,
        env = "WEIGHTGATE_S3_PATH_STYLE",
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub s3_path_style: bool,

    /// Access key id for the S3 store. Without it (and the secret), the standard
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` are used.
    #[arg(
        long,
        env = "WEIGHTGATE_S3_ACCESS_KEY_ID",
        global = true,
        hide_env_values = true
    )]
    pub s3_access_key_id: Option<String>,

    /// Secret access key for the S3 store.
    #[arg(
        long,
        env = "WEIGHTGATE_S3_SECRET_ACCESS_KEY",
        global = true,
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,

    /// Address the portal listens on.
    #[arg(
        long,
        env = "WEIGHTGATE_BIND",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub bind: SocketAddr,

    /// URL people reach the portal at, used in e-mails and links.
    /// Defaults to `http://BIND`.
    #[arg(long, env = "WEIGHTGATE_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// SMTP server for outgoing mail, e.g. `smtp://user:pass@host:587`.
    /// Without it, e-mails are written as `.eml` files to `DATA_DIR/outbox`.
    #[arg(long, env = "WEIGHTGATE_SMTP_URL", global = true, hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Sender address of outgoing mail.
    #[arg(
        long,
        env = "WEIGHTGATE_MAIL_FROM",
        default_value = "weightgate <noreply@weightgate.invalid>",
        global = true
    )]
    pub(crate) mail_from: String,

    /// How long a new grant lasts, unless the reviewer says otherwise.
    #[arg(long, env = "WEIGHTGATE_GRANT_TTL", default_value = "30days", value_parser = humantime::parse_duration, global = true)]
    pub grant_ttl: Duration,

    /// How long a signed download link stays valid.
    #[arg(long, env = "WEIGHTGATE_LINK_TTL", default_value = "24h", value_parser = humantime::parse_duration, global = true)]
    pub link_ttl: Duration,

    /// How long an access URL (of an access page or the download client's
    /// manifest) keeps working without being used; each use starts it again.
    /// It never outlives its grant.
    #[arg(long, env = "WEIGHTGATE_ACCESS_URL_TTL", default_value = "90days", value_parser = humantime::parse_duration, global = true)]
    pub access_url_ttl: Duration,

    /// An access URL used from more client networks (IPv4 addresses, IPv6
    /// /64s) than this is flagged on the grant's page and in `audit anomalies`.
    #[arg(
        long,
        env = "WEIGHTGATE_ACCESS_URL_MAX_NETWORKS",
        default_value_t = 3,
        global = true
    )]
    pub access_url_max_networks: u32,

    /// How downloads are delivered: `proxy` streams them through the portal;
    /// `redirect` (S3 stores only) answers each checked and audited fetch
    /// with a 302 to a presigned URL valid for two minutes.
    #[arg(long, env = "WEIGHTGATE_DELIVERY", value_enum, default_value_t = DeliveryMode::Proxy, global = true)]
    pub delivery: DeliveryMode,

    /// How long a stopping portal (SIGTERM, Ctrl-C) lets downloads in flight
    /// finish before it closes them.
    #[arg(long, env = "WEIGHTGATE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub(crate) shutdown_grace: Duration,

    /// How long a connection may go without the client taking any of the
    /// data sent to it (a download whose reader stopped) before the portal
    /// drops it; its transfer is then logged as aborted.
    #[arg(long, env = "WEIGHTGATE_STALL_TIMEOUT", default_value = "5min", value_parser = humantime::parse_duration, global = true)]
    pub stall_timeout: Duration,

    /// How long a client has to send a request's headers, and how long a
    /// kept-alive connection waits for its next request before it is closed.
    #[arg(long, env = "WEIGHTGATE_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub header_timeout: Duration,

    /// Connections open at once; beyond them new ones wait to be accepted.
    /// Lowered to fit the process's file-descriptor limit.
    #[arg(
        long,
        env = "WEIGHTGATE_MAX_CONNECTIONS",
        default_value_t = 10_000,
        global = true
    )]
    pub(crate) max_connections: usize,

    /// Connections open at once from one client address (trusted proxies
    /// excepted); beyond them new ones are closed at once.
    #[arg(
        long,
        env = "WEIGHTGATE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256,
        global = true
    )]
    pub max_connections_per_address: usize,

    /// How often a running portal signs a checkpoint of the audit log's head
    /// (when it moved).
    #[arg(long, env = "WEIGHTGATE_AUDIT_CHECKPOINT_EVERY", default_value = "10min", value_parser = humantime::parse_duration, global = true)]
    pub(crate) audit_checkpoint_every: Duration,

    /// How often a running portal folds new audit events into the totals the
    /// download reports read (a report folds what is left itself).
    #[arg(long, env = "WEIGHTGATE_REPORTS_EVERY", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub reports_every: Duration,

    /// How often a running portal reads new audit events into webhook
    /// messages and sends those that are due.
    #[arg(long, env = "WEIGHTGATE_WEBHOOK_EVERY", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub webhook_every: Duration,

    /// The waits between attempts at a webhook message the receiver did not
    /// take, as durations separated by commas; when all are spent the
    /// subscription is disabled and its owner e-mailed.
    #[arg(long, env = "WEIGHTGATE_WEBHOOK_RETRIES", default_value = DEFAULT_WEBHOOK_RETRIES, value_parser = parse_retries, global = true)]
    pub webhook_retries: Retries,

    /// How long a webhook receiver has to answer.
    #[arg(long, env = "WEIGHTGATE_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub webhook_timeout: Duration,

    /// Let webhooks call endpoints on loopback, private and link-local
    /// addresses (refused by default, so that a subscription cannot make the
    /// portal reach into its own network).
    #[arg(
        long,
        env = "WEIGHTGATE_WEBHOOK_ALLOW_PRIVATE",
        default_value_t = false,
        global = true
    )]
    pub webhook_allow_private: bool,

    /// How long before a grant expires its researcher gets a reminder by e-mail.
    #[arg(long, env = "WEIGHTGATE_EXPIRY_REMINDER", default_value = "7days", value_parser = humantime::parse_duration, global = true)]
    pub(crate) expiry_reminder: Duration,

    /// How often a running portal looks for grants to remind of or record as
    /// expired, and for reviewers' daily digests that are due.
    #[arg(long, env = "WEIGHTGATE_NOTICES_EVERY", default_value = "1min", value_parser = humantime::parse_duration, global = true)]
    pub(crate) notices_every: Duration,

    /// Application forms accepted from one client address, as COUNT/DURATION:
    /// COUNT at once, refilled evenly over DURATION. Limits are per replica.
    #[arg(
        long,
        env = "WEIGHTGATE_LIMIT_APPLICATIONS_PER_ADDRESS",
        default_value = "30/1h",
        global = true
    )]
    pub limit_applications_per_address: Rate,

    /// E-mails sent on request (application confirmations, sign-in links) to
    /// one address, as COUNT/DURATION.
    #[arg(
        long,
        env = "WEIGHTGATE_LIMIT_MAIL_PER_RECIPIENT",
        default_value = "10/1h",
        global = true
    )]
    pub limit_mail_per_recipient: Rate,

    /// Sign-in link requests from one client address, as COUNT/DURATION.
    #[arg(
        long,
        env = "WEIGHTGATE_LIMIT_SIGNIN_PER_ADDRESS",
        default_value = "30/1h",
        global = true
    )]
    pub limit_signin_per_address: Rate,

    /// Access pages and manifests (each signs fresh links) for one grant, as
    /// COUNT/DURATION.
    #[arg(
        long,
        env = "WEIGHTGATE_LIMIT_LINKS_PER_GRANT",
        default_value = "120/1h",
        global = true
    )]
    pub limit_links_per_grant: Rate,

    /// Access pages and manifests from one client address, as COUNT/DURATION.
    #[arg(
        long,
        env = "WEIGHTGATE_LIMIT_LINKS_PER_ADDRESS",
        default_value = "600/1h",
        global = true
    )]
    pub limit_links_per_address: Rate,

    /// Reviewer passwords checked at once (argon2id, 19 MiB and tens of
    /// milliseconds of a core each); a sign-in beyond them is answered 429
    /// with `Retry-After`.
    #[arg(long, env = "WEIGHTGATE_PASSWORD_CHECKS", default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256), global = true)]
    pub password_checks: usize,

    /// How long a dashboard or researcher session lasts without a request.
    #[arg(long, env = "WEIGHTGATE_SESSION_IDLE", default_value = "8h", value_parser = humantime::parse_duration, global = true)]
    pub session_idle: Duration,

    /// Fetches refused on their link alone (malformed, altered, expired or
    /// retired links) from one client address, as COUNT/DURATION; beyond it
    /// they are answered 429 rather than 403.
    #[arg(
        long,
        env = "WEIGHTGATE_LIMIT_BAD_LINKS_PER_ADDRESS",
        default_value = "60/1min",
        global = true
    )]
    pub limit_bad_links_per_address: Rate,

    /// API requests with one token, as COUNT/DURATION; beyond it they are
    /// answered 429 with `Retry-After`.
    #[arg(
        long,
        env = "WEIGHTGATE_LIMIT_API_PER_TOKEN",
        default_value = "600/1min",
        global = true
    )]
    pub limit_api_per_token: Rate,

    /// API requests with a token that is not accepted (unknown, revoked,
    /// expired), from one client address, as COUNT/DURATION.
    #[arg(
        long,
        env = "WEIGHTGATE_LIMIT_BAD_TOKENS_PER_ADDRESS",
        default_value = "30/1min",
        global = true
    )]
    pub limit_bad_tokens_per_address: Rate,

    /// How long refusals anyone can provoke (fetches refused on their link
    /// alone, throttled sign-ins) are counted per client network before one
    /// event sums them up (the first of each window is written at once).
    #[arg(long, env = "WEIGHTGATE_REFUSAL_WINDOW", default_value = "1min", value_parser = humantime::parse_duration, global = true)]
    pub refusal_window: Duration,

    /// Load balancers or reverse proxies in front of the portal, as a
    /// comma-separated list of addresses or networks, e.g.
    /// `10.0.0.0/8,192.0.2.10`. For requests arriving from them the client's
    /// address (audit log, rate limits) is read from `X-Forwarded-For`; from
    /// anyone else that header is ignored.
    #[arg(
        long,
        env = "WEIGHTGATE_TRUSTED_PROXIES",
        default_value = "",
        hide_default_value = true,
        global = true
    )]
    pub trusted_proxies: TrustedProxies,

    /// The key that signs audit checkpoints, as URL-safe base64 of its
    /// 32-byte seed. Without it the key is read from
    /// `WEIGHTGATE_AUDIT_KEY_FILE`. Never stored in the database.
    #[arg(long, env = "WEIGHTGATE_AUDIT_KEY", global = true, hide_env_values = true)]
    pub(crate) audit_key: Option<String>,

    /// The file holding the audit checkpoint key; a portal that starts
    /// without one makes it. Defaults to `DATA_DIR/audit-checkpoint.key`.
    #[arg(long, env = "WEIGHTGATE_AUDIT_KEY_FILE", global = true)]
    pub(crate) audit_key_file: Option<std::path::PathBuf>,

    /// Public keys (hex, comma-separated) of earlier checkpoint keys whose
    /// checkpoints `audit verify` still believes after a key change.
    #[arg(
        long,
        env = "WEIGHTGATE_AUDIT_TRUSTED_KEYS",
        default_value = "",
        hide_default_value = true,
        global = true
    )]
    pub(crate) audit_trusted_keys: String,

    /// Where each checkpoint is also kept, beyond the database's reach:
    /// `file://DIR` or `s3://BUCKET/PREFIX`. Defaults to the object store of
    /// the weights, under `audit-witness/`.
    #[arg(long, env = "WEIGHTGATE_WITNESS_URL", global = true)]
    pub(crate) witness_url: Option<String>,

    /// How long a bucket with S3 Object Lock keeps each checkpoint locked
    /// (compliance mode: nobody can delete it before then).
    #[arg(long, env = "WEIGHTGATE_WITNESS_RETENTION", default_value = "7years", value_parser = humantime::parse_duration, global = true)]
    pub(crate) witness_retention: Duration,

    /// A file each checkpoint is also appended to, one JSON line each.
    #[arg(long, env = "WEIGHTGATE_WITNESS_FILE", global = true)]
    pub witness_file: Option<std::path::PathBuf>,

    /// Auditors (comma-separated e-mail addresses) each checkpoint is also
    /// e-mailed to.
    #[arg(
        long,
        env = "WEIGHTGATE_WITNESS_EMAIL",
        default_value = "",
        hide_default_value = true,
        global = true
    )]
    pub witness_email: String,

    /// Log format.
    #[arg(long, env = "WEIGHTGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeliveryMode {
    Proxy,
    Redirect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the weight files live, from [`Config::storage_url`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StorageLocation {
    /// Files under a local directory.
    Dir(PathBuf),
    /// Objects in an S3 bucket, every key under `prefix` (empty, or ending in `/`).
    S3 { bucket: String, prefix: String },
}

impl Config {
    /// A configuration with every default, rooted at `data_dir`: the
    /// defaults written on the fields above (the same a bare `weightgate serve`
    /// gets), and nothing from the environment.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        use clap::FromArgMatches;
        let command =
            <Self as Args>::augment_args(clap::Command::new("weightgate")).mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["weightgate"])
            .expect("every setting has a default");
        let mut config = Self::from_arg_matches(&matches).expect("every default parses");
        config.data_dir = data_dir.into();
        config
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("weightgate.db").display()
            ),
        }
    }

    /// Where the weight files live: [`Config::storage_url`] parsed, or `DATA_DIR/objects`.
    pub(crate) fn storage_location(&self) -> anyhow::Result<StorageLocation> {
        match &self.storage_url {
            Some(url) => Self::location(url),
            None => Ok(StorageLocation::Dir(self.data_dir.join("objects"))),
        }
    }

    /// The place a storage URL names: `file://DIR` or `s3://BUCKET/PREFIX`.
    pub(crate) fn location(url: &str) -> anyhow::Result<StorageLocation> {
        let accepted = "expected file://DIR or s3://BUCKET/PREFIX (or leave it unset for DATA_DIR/objects)";
        if let Some(path) = url.strip_prefix("file://") {
            anyhow::ensure!(
                !path.is_empty(),
                "storage URL {url:?} names no directory: {accepted}"
            );
            return Ok(StorageLocation::Dir(PathBuf::from(path)));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            anyhow::bail!("unsupported storage URL {url:?}: {accepted}");
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = !bucket.is_empty()
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        anyhow::ensure!(
            bucket_ok,
            "storage URL {url:?} needs a bucket name of letters, digits, '-', '.' and '_': {accepted}"
        );
        let prefix = prefix.trim_matches('/');
        anyhow::ensure!(
            prefix.split('/').all(|part| !matches!(part, "." | "..")) && !prefix.contains("//"),
            "storage URL {url:?} has an unusable prefix: {accepted}"
        );
        Ok(StorageLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    /// The public base URL without a trailing slash.
    pub(crate) fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.bind),
        }
    }

    pub(crate) fn is_https(&self) -> bool {
        self.public_url().starts_with("https://")
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "[redacted]");
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact(&self.database_url))
            .field("storage_url", &self.storage_url)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_path_style", &self.s3_path_style)
            .field("s3_access_key_id", &redact(&self.s3_access_key_id))
            .field("s3_secret_access_key", &redact(&self.s3_secret_access_key))
            .field("bind", &self.bind)
            .field("public_url", &self.public_url)
            .field("smtp_url", &redact(&self.smtp_url))
            .field("mail_from", &self.mail_from)
            .field("grant_ttl", &self.grant_ttl)
            .field("link_ttl", &self.link_ttl)
            .field("access_url_ttl", &self.access_url_ttl)
            .field("access_url_max_networks", &self.access_url_max_networks)
            .field("delivery", &self.delivery)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("stall_timeout", &self.stall_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_address", &self.max_connections_per_address)
            .field("audit_checkpoint_every", &self.audit_checkpoint_every)
            .field("reports_every", &self.reports_every)
            .field("webhook_every", &self.webhook_every)
            .field("webhook_retries", &self.webhook_retries)
            .field("webhook_timeout", &self.webhook_timeout)
            .field("webhook_allow_private", &self.webhook_allow_private)
            .field("expiry_reminder", &self.expiry_reminder)
            .field("notices_every", &self.notices_every)
            .field(
                "limit_applications_per_address",
                &self.limit_applications_per_address,
            )
            .field("limit_mail_per_recipient", &self.limit_mail_per_recipient)
            .field("limit_signin_per_address", &self.limit_signin_per_address)
            .field("limit_links_per_grant", &self.limit_links_per_grant)
            .field("limit_links_per_address", &self.limit_links_per_address)
            .field("limit_bad_links_per_address", &self.limit_bad_links_per_address)
            .field("refusal_window", &self.refusal_window)
            .field("password_checks", &self.password_checks)
            .field("session_idle", &self.session_idle)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("audit_key", &self.audit_key.as_ref().map(|_| "[redacted]"))
            .field("audit_key_file", &self.audit_key_file)
            .field("audit_trusted_keys", &self.audit_trusted_keys)
            .field("witness_url", &self.witness_url)
            .field("witness_retention", &self.witness_retention)
            .field("witness_file", &self.witness_file)
            .field("witness_email", &self.witness_email)
            .field("log_format", &self.log_format)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_retry_schedules_are_read_and_checked() {
        assert_eq!(parse_retries(DEFAULT_WEBHOOK_RETRIES).unwrap().0.len(), 7);
        assert!(parse_retries("5s,soon").is_err());
    }

    fn with_storage(url: Option<&str>) -> Config {
        let mut config = Config::embedded("/srv/wg");
        config.storage_url = url.map(str::to_owned);
        config
    }

    #[test]
    fn rates_read_as_count_per_duration() {
        let rate: Rate = "30/1h".parse().unwrap();
        assert_eq!(rate.burst.get(), 30);
        assert_eq!(rate.per, Duration::from_secs(3600));
        assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
        for bad in ["", "30", "0/1h", "-1/1h", "30/", "30/0s", "x/1h", "30/soon"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn storage_urls_name_a_directory_or_a_bucket() {
        let s3 = |bucket: &str, prefix: &str| StorageLocation::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        let cases = [
            (None, StorageLocation::Dir("/srv/wg/objects".into())),
            (
                Some("file:///mnt/weights"),
                StorageLocation::Dir("/mnt/weights".into()),
            ),
            (Some("s3://weights"), s3("weights", "")),
            (Some("s3://weights/"), s3("weights", "")),
            (Some("s3://weights/lab/prod/"), s3("weights", "lab/prod/")),
            (Some("s3://my.bucket-1/lab"), s3("my.bucket-1", "lab/")),
        ];
        for (url, expected) in cases {
            assert_eq!(with_storage(url).storage_location().unwrap(), expected, "{url:?}");
        }
    }

    #[test]
    fn a_bad_storage_url_names_the_accepted_forms() {
        for url in [
            "/mnt/weights",
            "file://",
            "s3://",
            "s3:///prefix",
            "s3://bad bucket/x",
            "s3://bucket/a/../b",
            "s3://bucket/a//b",
            "gs://bucket",
        ] {
            let err = with_storage(Some(url))
                .storage_location()
                .unwrap_err()
                .to_string();
            assert!(err.contains("file://DIR or s3://BUCKET/PREFIX"), "{url}: {err}");
        }
    }

    #[test]
    fn the_embedded_configuration_has_the_documented_defaults() {
        let c = Config::embedded("/srv/wg");
        assert_eq!(c.data_dir, PathBuf::from("/srv/wg"));
        assert_eq!(c.database_url(), "sqlite:///srv/wg/weightgate.db?mode=rwc");
        assert_eq!(c.bind, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(c.grant_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.link_ttl, Duration::from_secs(86_400));
        assert_eq!(c.session_idle, Duration::from_secs(8 * 3600));
        assert_eq!(c.password_checks, 4);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.limit_applications_per_address.burst.get(), 30);
        assert_eq!(c.limit_bad_links_per_address.burst.get(), 60);
        assert!(c.database_url.is_none() && c.storage_url.is_none() && c.smtp_url.is_none());
    }

    #[test]
    fn debug_output_hides_credentials() {
        let mut config = Config::embedded("/srv/wg");
        config.s3_access_key_id = Some("AKIDEXAMPLE".into());
        config.s3_secret_access_key = Some("wJalrXUtnFEMI".into());
        config.database_url = Some("postgres://wg:hunter2@db/wg".into());
        let shown = format!("{config:?}");
        for secret in ["AKIDEXAMPLE", "wJalrXUtnFEMI", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
