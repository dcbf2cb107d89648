//! Outgoing e-mail. A message is put in the outbox table in the same
//! transaction as the change it announces; a worker then sends it, through
//! SMTP or, in the embedded setup, as an `.eml` file in the outbox folder.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use tokio::sync::Notify;

use crate::{
    config::Config,
    db::{self, Db, Tx},
    types::{new_id, now_ms},
};

/// Queues a message; it is sent once `tx` commits.
pub async fn enqueue(tx: &mut Tx, to: &str, subject: &str, body: &str) -> anyhow::Result<()> {
    db::outbox::insert(&mut **tx, &new_id(), to, subject, body, now_ms())
        .await
        .context("cannot queue e-mail")
}

enum Transport {
    Files(AsyncFileTransport<Tokio1Executor>),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

/// Queues wake-ups for the outbox worker, and sends through the configured transport.
#[derive(Clone)]
pub struct Mailer {
    wake: Arc<Notify>,
    sender: Arc<(Transport, Mailbox)>,
    outbox_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Checks the mail settings; nothing is sent until [`Mailer::run_worker`].
    pub(crate) fn new(config: &Config) -> anyhow::Result<Self> {
        let from: Mailbox = config.mail_from.parse().with_context(|| {
            format!(
                "WEIGHTGATE_MAIL_FROM {:?} is not a valid mailbox",
                config.mail_from
            )
        })?;
        let transport = match &config.smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .context("WEIGHTGATE_SMTP_URL is not a valid SMTP URL")?
                    .build(),
            ),
            None => Transport::Files(AsyncFileTransport::new(config.outbox_dir())),
        };
        Ok(Self {
            wake: Arc::new(Notify::new()),
            sender: Arc::new((transport, from)),
            outbox_dir: (config.smtp_url.is_none()).then(|| config.outbox_dir()),
        })
    }

    /// Starts the worker that drains the outbox; the portal runs one per
    /// replica. Operator commands only queue mail, so a short-lived command
    /// never holds a message it will not live to send.
    pub fn run_worker(&self, db: Db) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        if let Some(dir) = &self.outbox_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let wake = self.wake.clone();
        let sender = self.sender.clone();
        let worker = new_id();
        Ok(tokio::spawn(async move {
            let (transport, from) = &*sender;
            loop {
                if let Err(err) = drain(&db, &worker, transport, from).await {
                    tracing::warn!(error = %format!("{err:#}"), "outbox: cannot read queued e-mail");
                }
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }))
    }
}

/// How long a claimed message belongs to one worker; longer than any send.
const LEASE_MS: i64 = 120_000;

/// Sends every due message this worker can claim; a failed one is retried
/// later with backoff, by whichever worker claims it then.
async fn drain(db: &Db, worker: &str, transport: &Transport, from: &Mailbox) -> anyhow::Result<()> {
    loop {
        let now = now_ms();
        let due = if db::outbox::any_due(db.pool(), now).await? {
            db::outbox::claim_due(db.pool(), worker, now, now + LEASE_MS, 20).await?
        } else {
            Vec::new()
        };
        if due.is_empty() {
            let depth = db::outbox::count_unsent(db.pool()).await?;
            metrics::gauge!("weightgate_outbox_depth").set(depth as f64);
            return Ok(());
        }
        for msg in due {
            match send(transport, from, &msg).await {
                Ok(()) => db::outbox::mark_sent(db.pool(), &msg.id, now_ms()).await?,
                Err(err) => {
                    let backoff_secs = 5i64 << msg.attempts.clamp(0, 10);
                    tracing::warn!(to = %msg.to_addr, attempts = msg.attempts + 1, error = %format!("{err:#}"), "e-mail not sent; will retry");
                    db::outbox::mark_failed(
                        db.pool(),
                        &msg.id,
                        now_ms() + backoff_secs * 1000,
                        &format!("{err:#}"),
                    )
                    .await?;
                }
            }
        }
    }
}

async fn send(transport: &Transport, from: &Mailbox, msg: &db::outbox::OutboxMessage) -> anyhow::Result<()> {
    let email = Message::builder()
        .from(from.clone())
        .to(msg.to_addr.parse().context("invalid recipient")?)
        .subject(&msg.subject)
        .singlepart(plain_text(&msg.body))
        .context("cannot build e-mail")?;
    match transport {
        Transport::Files(t) => {
            t.send(email).await.context("cannot write e-mail file")?;
        }
        Transport::Smtp(t) => {
            t.send(email).await.context("SMTP server refused the e-mail")?;
        }
    }
    Ok(())
}

/// A plain-text body as it reads in any mail client and in the raw file:
/// 7bit for ASCII, 8bit for other UTF-8, lines as written (ended by CRLF),
/// so that no line is cut by a quoted-printable soft break. RFC 5322 allows
/// lines of up to 998 bytes, which an e-mail with a long link needs;
/// lettre's own choice stops at 76 and would quote the whole body.
/// Quoted-printable only where a line is longer than e-mail allows.
fn plain_text(body: &str) -> lettre::message::SinglePart {
    use lettre::message::{Body, SinglePart, header::ContentTransferEncoding};
    let text = body.replace("\r\n", "\n");
    let fits = text.lines().all(|line| line.len() <= 998) && !text.contains(['\0', '\r']);
    let body = if fits {
        let encoding = if text.is_ascii() {
            ContentTransferEncoding::SevenBit
        } else {
            ContentTransferEncoding::EightBit
        };
        Body::dangerous_pre_encoded(text.replace('\n', "\r\n").into_bytes(), encoding)
    } else {
        Body::new(body.to_owned())
    };
    SinglePart::builder().header(ContentType::TEXT_PLAIN).body(body)
}
