//! The running portal's parts, built once from the configuration and shared by
//! the web server and the operator commands.

use std::{sync::Arc, time::Duration};

use anyhow::Context;

use crate::{
    audit::{
        AuditLog,
        checkpoint::{self, AuditKey, Trust},
    },
    config::{Config, DeliveryMode},
    crypto::links::LinkSigner,
    crypto::manifests::Publisher,
    db::Db,
    db::facts::FetchFacts,
    mail::Mailer,
    storage::{self, ObjectStore},
};

/// What [`App::open`] does about the database schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// Apply pending migrations (the demo, and tests).
    Migrate,
    /// Refuse to start unless the schema is current.
    Check,
}

#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub db: Db,
    pub(crate) storage: Arc<dyn ObjectStore>,
    pub audit: AuditLog,
    /// What fetches need to know about files and grants that never changes.
    pub(crate) fetch_facts: FetchFacts,
    pub mail: Mailer,
    pub links: Arc<LinkSigner>,
    /// Signs release manifests and `SHA256SUMS`.
    pub(crate) publisher: Publisher,
    /// Checks reviewers' passwords, a few at a time.
    pub(crate) passwords: crate::crypto::passwords::Passwords,
    /// Refused fetches that name no grant, counted per client network.
    pub refusals: Arc<crate::audit::refusals::RefusalTally>,
    /// Where each audit checkpoint is also kept, beyond the database.
    pub(crate) witness: crate::audit::witness::Witness,
    /// The audit checkpoint key, once read (or made).
    audit_key: std::sync::OnceLock<Arc<AuditKey>>,
}

impl App {
    /// Opens the data directory and database, checks (or, with
    /// [`Schema::Migrate`], applies) migrations and starts the audit writer and
    /// the outbox worker.
    pub async fn open(config: Config, schema: Schema) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
        let db = Db::connect(&config.database_url()).await?;
        match schema {
            Schema::Migrate => db.migrate().await?,
            Schema::Check => db.check_schema().await?,
        }
        let storage = storage::open(&config).await?;
        if config.delivery == DeliveryMode::Redirect
            && storage
                .presign_get("sha256/00/probe", None, crate::storage::REDIRECT_TTL, "probe")
                .await?
                .is_none()
        {
            anyhow::bail!("WEIGHTGATE_DELIVERY=redirect needs an S3 store (WEIGHTGATE_STORAGE_URL=s3://…)");
        }
        let links = Arc::new(LinkSigner::load(&db, config.link_ttl).await?);
        let publisher = Publisher::load(&db).await?;
        let audit = AuditLog::start(db.clone());
        let mail = Mailer::new(&config)?;
        let passwords = crate::crypto::passwords::Passwords::new(config.password_checks);
        let refusals = Arc::new(crate::audit::refusals::RefusalTally::new(config.refusal_window));
        let witness = crate::audit::witness::Witness::open(&config, storage.clone()).await?;
        Ok(Arc::new(Self {
            passwords,
            refusals,
            witness,
            audit_key: std::sync::OnceLock::new(),
            config,
            db,
            storage,
            audit,
            fetch_facts: FetchFacts::default(),
            mail,
            links,
            publisher,
        }))
    }

    /// The key that signs audit checkpoints: the configured one, or one made
    /// now in the key file when there is none (a portal's first start).
    pub(crate) async fn audit_key(&self) -> anyhow::Result<Arc<AuditKey>> {
        if let Some(key) = self.audit_key.get() {
            return Ok(key.clone());
        }
        let key = Arc::new(AuditKey::configured_or_new(&self.config, &self.db, &self.witness).await?);
        Ok(self.audit_key.get_or_init(|| key).clone())
    }

    /// The checkpoint keys a verification believes: the configured key and
    /// `WEIGHTGATE_AUDIT_TRUSTED_KEYS`; never one read from the database.
    pub fn audit_trust(&self) -> anyhow::Result<Trust> {
        let mut trust = Trust::from_config(&self.config)?;
        if let Some(key) = self.audit_key.get() {
            trust.add(key.public_key());
        }
        Ok(trust)
    }

    /// Signs the audit log's head ([`checkpoint::checkpoint`]) with this
    /// portal's key, and gives it to the witness.
    pub(crate) async fn checkpoint(&self) -> anyhow::Result<checkpoint::Checkpointed> {
        let key = self.audit_key().await?;
        checkpoint::checkpoint(&self.db, &key, &self.audit_trust()?, &self.witness).await
    }

    /// Signs the head every `every` (at least a second) whenever it moved;
    /// runs until the task is dropped. A failure is logged and tried again
    /// next time, so a damaged log keeps being reported rather than signed.
    pub async fn checkpoint_periodically(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: skip it, so a start does not sign at once.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let signed = async {
                let key = self.audit_key().await?;
                checkpoint::checkpoint_if_moved(&self.db, &key, &self.audit_trust()?, &self.witness).await
            };
            match signed.await {
                Ok(Some(done)) if done.new => tracing::info!(
                    seq = done.checkpoint.seq,
                    kid = %done.checkpoint.kid,
                    locked = done.locked,
                    "signed an audit checkpoint and gave it to the witness"
                ),
                Ok(_) => {}
                Err(err) => tracing::error!(error = %format!("{err:#}"), "cannot sign an audit checkpoint"),
            }
        }
    }

    /// Where archived segments of the audit log are kept: the witness's
    /// store, with scratch copies in the data directory.
    pub fn audit_archive(&self) -> crate::audit::archive::Archive {
        crate::audit::archive::Archive {
            store: self.witness.store(),
            scratch: self.config.data_dir.join("scratch"),
            retention: self.config.witness_retention,
        }
    }

    /// Keeps the totals the download reports read a few seconds behind the
    /// log at most, so that a report or the dashboard seldom folds more than
    /// that itself.
    pub async fn fold_reports_periodically(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match crate::audit::report::catch_up(&self.db).await {
                Ok(done) if done.folded > 0 => {
                    tracing::debug!(
                        events = done.folded,
                        rebuilt = done.rebuilt,
                        "folded audit events into the report totals"
                    )
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "cannot fold the audit log into the report totals")
                }
            }
        }
    }

    /// Recomputes the audit log's chain and checks every checkpoint in the
    /// database and in the witness, with the keys this portal trusts.
    pub async fn verify_audit_log(&self) -> anyhow::Result<crate::audit::Verification> {
        let witnessed = self.witness.read().await?;
        crate::audit::verify_with(
            &self.db,
            &self.audit_archive(),
            &self.audit_trust()?,
            &witnessed,
            None,
        )
        .await
    }

    /// Audits a refusal anyone can repeat at will (a throttled sign-in, a
    /// withdrawn access URL, links under an ended grant): counted per client
    /// network, reason and grant, only the first of each window written now
    /// (see [`crate::audit::refusals`]). `event` carries its client.
    pub(crate) async fn record_refusal(&self, event: crate::audit::Event) -> anyhow::Result<()> {
        let network = event.client.network();
        if self.refusals.note(&network, &event) == crate::audit::refusals::Tallied::First {
            crate::audit::append_now(&self.db, event).await?;
        }
        Ok(())
    }

    /// The public URL of a path that starts with `/`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.public_url())
    }
}
