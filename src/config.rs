//! Settings for every command, from flags or `WEIGHTGATE_*` environment variables.
//! The defaults run the embedded setup with nothing installed: a SQLite file, an
//! object directory and an e-mail outbox folder, all under the data directory.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

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

    /// Object store holding the weight files: `file://DIR`. Defaults to `DATA_DIR/objects`.
    #[arg(long, env = "WEIGHTGATE_STORAGE_URL", global = true)]
    pub storage_url: Option<String>,

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
    pub mail_from: String,

    /// How long a new grant lasts, unless the reviewer says otherwise.
    #[arg(long, env = "WEIGHTGATE_GRANT_TTL", default_value = "30days", value_parser = humantime::parse_duration, global = true)]
    pub grant_ttl: Duration,

    /// How long a signed download link stays valid.
    #[arg(long, env = "WEIGHTGATE_LINK_TTL", default_value = "24h", value_parser = humantime::parse_duration, global = true)]
    pub link_ttl: Duration,

    /// How long a stopping portal (SIGTERM, Ctrl-C) lets downloads in flight
    /// finish before it closes them.
    #[arg(long, env = "WEIGHTGATE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// How often a running portal signs a checkpoint of the audit log's head
    /// (when it moved).
    #[arg(long, env = "WEIGHTGATE_AUDIT_CHECKPOINT_EVERY", default_value = "10min", value_parser = humantime::parse_duration, global = true)]
    pub audit_checkpoint_every: Duration,

    /// Log format.
    #[arg(long, env = "WEIGHTGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// A configuration with every default, rooted at `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            storage_url: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            smtp_url: None,
            mail_from: "weightgate <noreply@weightgate.invalid>".into(),
            grant_ttl: Duration::from_secs(30 * 86_400),
            link_ttl: Duration::from_secs(86_400),
            shutdown_grace: Duration::from_secs(30),
            audit_checkpoint_every: Duration::from_secs(600),
            log_format: LogFormat::Text,
        }
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

    pub fn object_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.storage_url {
            None => Ok(self.data_dir.join("objects")),
            Some(url) => match url.strip_prefix("file://") {
                Some(path) => Ok(PathBuf::from(path)),
                None => anyhow::bail!(
                    "unsupported storage URL {url:?}: expected file://DIR (or leave it unset for DATA_DIR/objects)"
                ),
            },
        }
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    /// The public base URL without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.bind),
        }
    }

    pub fn is_https(&self) -> bool {
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
            .field("bind", &self.bind)
            .field("public_url", &self.public_url)
            .field("smtp_url", &redact(&self.smtp_url))
            .field("mail_from", &self.mail_from)
            .field("grant_ttl", &self.grant_ttl)
            .field("link_ttl", &self.link_ttl)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("audit_checkpoint_every", &self.audit_checkpoint_every)
            .field("log_format", &self.log_format)
            .finish()
    }
}
