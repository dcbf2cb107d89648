//! The `weightgate` command: parsing and dispatch to the same domain functions
//! the web portal uses.

mod audit;
mod demo;
mod output;
mod remote;

use std::{io::Read, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};

use output::Listing;

use crate::{
    app::{App, Schema},
    audit::Client,
    config::Config,
    db,
    domain::accounts::{self, ReviewerChange},
    domain::grants::{self, GrantState},
    domain::models,
    types::{Email, Slug, format_ms, format_ms_rfc3339, now_ms, states::Notify},
};

/// A gated distribution portal for machine-learning model weights.
#[derive(Parser, Debug)]
#[command(name = "weightgate", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    /// Who runs this command, as the audit log should name them (an e-mail
    /// or a name); the operating-system account is recorded beside it.
    #[arg(long = "as", env = "WEIGHTGATE_OPERATOR", global = true, value_name = "NAME")]
    pub(crate) operator: Option<String>,
    /// A portal to run the audit commands against, instead of its
    /// database: its address, e.g. https://weights.lab.example.org.
    #[arg(long, env = "WEIGHTGATE_URL", global = true, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// The API token (`audit` scope) for --url.
    #[arg(
        long,
        env = "WEIGHTGATE_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) token: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the portal.
    Serve,
    /// Run the portal with a sample model and an admin, creating them if needed.
    Demo,
    /// Apply database migrations.
    Migrate,
    /// Manage reviewer accounts.
    #[command(subcommand)]
    Reviewer(ReviewerCommand),
    /// Manage models and publish releases.
    #[command(subcommand)]
    Model(ModelCommand),
    /// List and revoke grants.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// Print the SHA-256 of files as `sha256sum` does, hashing several files at
    /// once; with --chunk-size, also each chunk's, as a manifest lists them.
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
    },
    /// Download every file of your grant, verified, resuming where it stopped.
    Download(DownloadArgs),
    /// Rotate the keys that sign download links.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read and check the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Make, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage webhook subscriptions and read their delivery logs.
    #[command(subcommand)]
    Webhook(WebhookCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum WebhookCommand {
    /// Subscribe an endpoint to event types, as a reviewer (it hears of the
    /// models they review; of every model for an admin); prints the
    /// subscription's signing secret, once, on standard output.
    Add {
        #[arg(long)]
        reviewer: String,
        #[arg(long)]
        url: String,
        /// Event types, comma-separated: application.submitted,
        /// application.confirmed, application.decided, grant.created,
        /// grant.extended, grant.revoked, grant.expired, release.published,
        /// file.delivered.
        #[arg(long)]
        events: String,
    },
    /// List subscriptions.
    List {
        /// Only this reviewer's.
        #[arg(long)]
        reviewer: Option<String>,
        #[command(flatten)]
        format: Listing,
    },
    /// Remove a subscription with its messages and delivery log.
    Remove { id: String },
    /// Give a subscription a new secret (printed); the old one signs beside
    /// it for a day.
    Rotate { id: String },
    /// Enable a subscription that was disabled after failing deliveries.
    Enable { id: String },
    /// A subscription's delivery log: each attempt and the answer received.
    Deliveries {
        id: String,
        #[command(flatten)]
        format: Listing,
    },
    /// Send a message again, with the same webhook-id.
    Resend { message_id: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Make an API token for a reviewer and print its secret, once, on
    /// standard output.
    Create {
        /// The reviewer the token acts as.
        #[arg(long)]
        reviewer: String,
        /// A name, which the audit log shows on every use.
        #[arg(long)]
        name: String,
        /// What it may do: read, review, admin, audit (comma-separated);
        /// admin and audit only for an admin's token.
        #[arg(long)]
        scopes: String,
        /// Days until it stops working.
        #[arg(long, default_value_t = 90)]
        days: u64,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this reviewer's.
        #[arg(long)]
        reviewer: Option<String>,
        #[command(flatten)]
        format: Listing,
    },
    /// Revoke a token: its next request is refused.
    Revoke { id: String },
}

/// A researcher's download: read on its own, so that its help shows its own
/// options and none of the portal's settings.
#[derive(Parser, Debug)]
#[command(
    name = "weightgate download",
    about = "Download every file of your grant, verified, resuming where it stopped."
)]
pub(crate) struct DownloadArgs {
    /// The manifest URL from your access page (or the access page's URL).
    url: String,
    /// Where to put the files: one folder per release holding the release's
    /// tree (DIR/RELEASE/PATH), with its signed SHA256SUMS at the top.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Parallel connections.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Only files whose path in the release matches this pattern (`*`, `?`;
    /// `*` also crosses folders: 'original/*', '*.json'); may be repeated.
    #[arg(long)]
    include: Vec<String>,
    /// The portal's publishing key: a minisign .pub file or its key line.
    /// Without it, the key the portal serves is used.
    #[arg(long)]
    public_key: Option<String>,
    /// The lab's model-signing key, which every release's model.sig must be
    /// signed with: a PEM file (or its text), as the model page shows it.
    /// Without it, the key the portal sends is used.
    #[arg(long)]
    model_signing_key: Option<String>,
    /// At most this many bytes per second, e.g. 50MiB.
    #[arg(long, value_parser = parse_size)]
    limit_rate: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ReviewerCommand {
    /// Create a reviewer, or set a new password for an existing one.
    Add {
        email: String,
        /// Also allow managing models, reviewers and settings.
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List reviewers with their role, models and notification choice.
    List {
        #[command(flatten)]
        format: Listing,
    },
    /// Let a reviewer decide applications for a model.
    Assign { email: String, model: String },
    /// Stop a reviewer deciding applications for a model.
    Unassign { email: String, model: String },
    /// Stop a reviewer signing in (their decisions stay on record).
    Disable { email: String },
    /// Let a disabled reviewer sign in again.
    Enable { email: String },
    /// Set how a reviewer hears of waiting applications.
    Notify {
        email: String,
        /// immediate, digest or off
        how: Notify,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ModelCommand {
    /// Create a model that researchers can apply for.
    Create {
        slug: String,
        #[arg(long)]
        title: String,
        /// File holding the terms of use researchers must accept.
        #[arg(long)]
        terms: Option<PathBuf>,
    },
    /// Hash and store every file of DIR as a new release of the model.
    Publish {
        slug: String,
        /// The model's directory, published as it is: folders and all.
        /// Hidden entries (`.git/`, `.cache/`, `.gitattributes`) are left out.
        /// Or s3://BUCKET/PREFIX, a bucket the portal's S3 credentials can
        /// read: its objects are hashed as they stream and copied into the
        /// portal's store by S3 itself, nothing written to local disk.
        #[arg(value_name = "DIR|s3://BUCKET/PREFIX")]
        dir: String,
        /// Release name; defaults to v1, v2, ...
        #[arg(long)]
        release: Option<String>,
        /// Leave out paths matching this glob (matched against the path
        /// inside DIR, e.g. 'onnx/*' or '*.bin'); may be given several times.
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// Publish what symbolic links point to, as long as it is inside DIR;
        /// without this a link is refused.
        #[arg(long)]
        follow_symlinks: bool,
        /// The model card (Markdown) shown on the model's page; by default
        /// DIR/README.md, as the model hubs publish it.
        #[arg(long, value_name = "FILE")]
        card: Option<PathBuf>,
        /// Size of the chunks whose SHA-256 the manifest lists, e.g. 64MiB:
        /// big enough that chunk hashes stay a small part of the manifest,
        /// small enough that a damaged chunk is cheap to fetch again.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        chunk_size: u64,
    },
    /// Limit what one grant may receive: bytes delivered or files completed.
    /// Resumed and repeated transfers of a file already completed do not count twice.
    Quota {
        slug: String,
        /// Most bytes delivered per grant, e.g. 500GiB.
        #[arg(long, value_parser = parse_size, conflicts_with = "unlimited")]
        bytes: Option<u64>,
        /// Most distinct files completed per grant.
        #[arg(long, conflicts_with = "unlimited")]
        files: Option<u64>,
        /// Lift both limits.
        #[arg(long)]
        unlimited: bool,
    },
    /// How applications for the model are reviewed. Options left out keep
    /// their current value.
    Policy {
        slug: String,
        /// Approvals from distinct reviewers an application needs (N of M).
        #[arg(long)]
        approvals: Option<i64>,
        /// E-mail domains (comma-separated) approved without a reviewer;
        /// an empty string turns automatic approval off.
        #[arg(long)]
        auto_approve_domains: Option<String>,
        /// Days an application may wait before the queue marks it overdue.
        #[arg(long)]
        target_days: Option<i64>,
    },
    /// List models.
    List {
        #[command(flatten)]
        format: Listing,
    },
    /// Set the model's own application questions from a JSON file (`-` reads
    /// standard input); without --file, print the current ones. Each question:
    /// {"id": "orcid", "label": "ORCID iD", "kind": "url", "required": false,
    /// "help": "…"}; kinds: text, long_text, select (with "options"),
    /// checkbox, country, url.
    Questions {
        slug: String,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Publish a new version of the model's terms from a file. New
    /// applications accept it; earlier ones keep the version they accepted.
    Terms {
        slug: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Set how many days a denied researcher waits before applying again
    /// (they may appeal once meanwhile).
    ReapplyAfter {
        slug: String,
        #[arg(long)]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// Sign new download links with a fresh key; links signed with older keys
    /// stay valid until they expire. Running replicas switch within a minute.
    Rotate,
    /// List the link-signing keys (never their secrets).
    List {
        #[command(flatten)]
        format: Listing,
    },
    /// Stop trusting a link-signing key, say after it leaked: links it signed
    /// are refused with `key_retired` at once, on every replica. Retiring the
    /// key that signs new links makes a fresh one first.
    Retire { kid: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum GrantCommand {
    /// List grants, newest first.
    List {
        #[command(flatten)]
        format: Listing,
    },
    /// Revoke a grant; its links stop working at the next fetch.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Extend a grant by DAYS from its current end (or from now if it ended).
    Extend {
        id: String,
        #[arg(long)]
        days: u64,
    },
}

/// Parses sizes such as `65536`, `64MiB` or `500GB`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size (try 64MiB): {e}"))
}

/// The command line, read. `weightgate download` is read on its own, so that
/// a researcher's `weightgate download --help` lists the download's options
/// only, not the portal's settings that every other command shares.
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "download") {
        return Cli {
            config: Config::embedded("."),
            operator: None,
            url: None,
            token: None,
            command: Command::Download(DownloadArgs::parse_from(
                std::iter::once("weightgate download".into()).chain(args[2..].iter().cloned()),
            )),
        };
    }
    Cli::parse_from(args)
}

/// Who the audit log names for this command: set once, before it runs.
static OPERATOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Who the audit log names for commands run by an operator:
/// `operator:NAME (os user USER)` when `--as NAME` (or `WEIGHTGATE_OPERATOR`)
/// is given, `operator:USER` otherwise, USER being the operating-system
/// account that ran the command.
fn operator() -> String {
    OPERATOR
        .get()
        .cloned()
        .unwrap_or_else(|| format!("operator:{}", os_user()))
}

/// The operating-system account running this process.
fn os_user() -> String {
    whoami::username().unwrap_or_else(|_| format!("uid-unknown:{}", std::process::id()))
}

/// The operator's name as the audit log will show it, checked.
fn operator_from(named: Option<&str>) -> anyhow::Result<String> {
    let os_user = os_user();
    match named.map(str::trim) {
        None | Some("") => Ok(format!("operator:{os_user}")),
        Some(name) => {
            anyhow::ensure!(
                name.chars().count() <= 200 && !name.chars().any(char::is_control),
                "--as names a person on one line, in at most 200 characters"
            );
            Ok(format!("operator:{name} (os user {os_user})"))
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = OPERATOR.set(operator_from(cli.operator.as_deref())?);
    match cli.command {
        Command::Serve => serve(App::open(cli.config, Schema::Check).await?).await,
        Command::Demo => {
            let app = App::open(cli.config, Schema::Migrate).await?;
            demo::seed(&app).await?;
            serve(app).await
        }
        Command::Migrate => {
            std::fs::create_dir_all(&cli.config.data_dir)
                .with_context(|| format!("cannot create data directory {}", cli.config.data_dir.display()))?;
            let db = db::Db::connect(&cli.config.database_url()).await?;
            db.migrate().await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Reviewer(cmd) => reviewer(App::open(cli.config, Schema::Check).await?, cmd).await,
        Command::Model(cmd) => model(App::open(cli.config, Schema::Check).await?, cmd).await,
        Command::Grant(cmd) => match remote_of(cli.url, cli.token)? {
            Some(remote) => remote::grant(remote, cmd).await,
            None => grant(App::open(cli.config, Schema::Check).await?, cmd).await,
        },
        Command::Hash { files, chunk_size } => hash(files, chunk_size).await,
        Command::Download(DownloadArgs {
            url,
            dir,
            jobs,
            include,
            public_key,
            model_signing_key,
            limit_rate,
        }) => {
            let include_given = !include.is_empty();
            let file_or_text = |given: Option<String>| match given {
                Some(k) if std::path::Path::new(&k).is_file() => std::fs::read_to_string(&k)
                    .with_context(|| format!("cannot read {k}"))
                    .map(Some),
                other => Ok(other),
            };
            let public_key = file_or_text(public_key)?;
            let model_signing_key = file_or_text(model_signing_key)?;
            let summary = crate::client::download(crate::client::Options {
                url,
                dir: dir.clone(),
                jobs,
                include,
                public_key,
                model_signing_key,
                limit_rate,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })
            .await?;
            let folders: Vec<String> = summary
                .release_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            println!(
                "{} verified in {} ({} already complete); fetched {} bytes in {} chunks, {} fetched again",
                crate::types::count(summary.files as u64, "file"),
                folders.join(", "),
                summary.already_complete,
                summary.bytes_fetched,
                summary.chunks_fetched,
                summary.chunks_refetched
            );
            println!(
                "each folder holds its release's signed SHA256SUMS: run `sha256sum -c SHA256SUMS` there{}",
                if include_given {
                    " (with --ignore-missing, since only some files were asked for)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Command::Keys(cmd) => keys(App::open(cli.config, Schema::Check).await?, cmd).await,
        Command::Token(cmd) => token(App::open(cli.config, Schema::Check).await?, cmd).await,
        Command::Webhook(cmd) => webhook(App::open(cli.config, Schema::Check).await?, cmd).await,
        Command::Audit(cmd) => match remote_of(cli.url, cli.token)? {
            Some(remote) => remote::run(remote, cmd).await,
            None => audit::run(App::open(cli.config, Schema::Check).await?, cmd).await,
        },
    }
}

/// The portal the command runs against, when `--url` names one.
fn remote_of(url: Option<String>, token: Option<String>) -> anyhow::Result<Option<remote::Remote>> {
    match (url, token) {
        (Some(url), Some(token)) => Ok(Some(remote::Remote::new(&url, &token)?)),
        (Some(_), None) => anyhow::bail!("--url needs --token (or WEIGHTGATE_TOKEN): an API token"),
        (None, _) => Ok(None),
    }
}

async fn serve(app: Arc<App>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(app.config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", app.config.bind))?;
    tracing::info!(url = %app.config.public_url(), data_dir = %app.config.data_dir.display(), "weightgate is serving");
    let proxies = &app.config.trusted_proxies;
    if proxies.trusts_everyone() {
        tracing::warn!(%proxies, "every address is a trusted proxy: any client can choose the address the audit log and the rate limits see");
    } else if !proxies.is_empty() {
        tracing::info!(%proxies, "client addresses are read from X-Forwarded-For behind these proxies");
    }
    crate::web::serve(app, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("cannot read the password from stdin")?;
        return Ok(input.trim_end_matches(['\n', '\r']).to_owned());
    }
    let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
    let second = rpassword::prompt_password("Repeat it: ").context("cannot read the password")?;
    anyhow::ensure!(first == second, "the passwords differ");
    Ok(first)
}

async fn find_reviewer(app: &App, email: &str) -> anyhow::Result<db::reviewers::Reviewer> {
    db::reviewers::find_by_email(app.db.pool(), &Email::lookup_key(email))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no reviewer {email}"))
}

async fn token(app: Arc<App>, cmd: TokenCommand) -> anyhow::Result<()> {
    use crate::domain::tokens::{self, RevokedBy, Scopes};
    match cmd {
        TokenCommand::Create {
            reviewer,
            name,
            scopes,
            days,
        } => {
            let owner = find_reviewer(&app, &reviewer).await?;
            let scopes: Scopes = scopes.parse()?;
            let created =
                tokens::create(&app, &owner, &name, scopes, days, &operator(), Client::default()).await?;
            eprintln!(
                "token {} ({:?}) for {} with scopes {}, until {} UTC; its secret, shown this once:",
                created.token.id,
                created.token.name,
                owner.email,
                created.token.scopes,
                format_ms(created.token.expires_at)
            );
            println!("{}", created.secret);
        }
        TokenCommand::List { reviewer, format } => {
            let owner = match reviewer {
                Some(email) => Some(find_reviewer(&app, &email).await?),
                None => None,
            };
            let reviewers = db::reviewers::list(app.db.pool()).await?;
            let email_of = |id: &str| {
                reviewers
                    .iter()
                    .find(|r| r.id == id)
                    .map_or_else(|| id.to_owned(), |r| r.email.clone())
            };
            let now = crate::types::now_ms();
            let rows: Vec<tokens::Token> = tokens::list_all(&app)
                .await?
                .into_iter()
                .filter(|t| owner.as_ref().is_none_or(|o| o.id == t.reviewer_id))
                .collect();
            output::print(
                format,
                &output::Columns {
                    headers: &[
                        "id",
                        "reviewer",
                        "name",
                        "scopes",
                        "state",
                        "expires",
                        "last used",
                    ],
                    optional: &["last used", "id"],
                    unbroken: &["id"],
                },
                rows.iter().map(|t| {
                    let last = t.last_used_at.map(format_ms).unwrap_or_default();
                    (
                        vec![
                            t.id.clone(),
                            email_of(&t.reviewer_id),
                            t.name.clone(),
                            t.scopes.to_string(),
                            t.state(now).into(),
                            format_ms(t.expires_at),
                            last,
                        ],
                        serde_json::json!({
                            "id": t.id,
                            "reviewer": email_of(&t.reviewer_id),
                            "name": t.name,
                            "scopes": t.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                            "state": t.state(now),
                            "created_at": format_ms_rfc3339(t.created_at),
                            "expires_at": format_ms_rfc3339(t.expires_at),
                            "last_used_at": t.last_used_at.map(format_ms_rfc3339),
                        }),
                    )
                }),
            );
        }
        TokenCommand::Revoke { id } => {
            let token =
                tokens::revoke(&app, &id, RevokedBy::Operator(&operator()), Client::default()).await?;
            println!("token {} ({:?}) is revoked", token.id, token.name);
        }
    }
    Ok(())
}

async fn webhook(app: Arc<App>, cmd: WebhookCommand) -> anyhow::Result<()> {
    use crate::domain::webhooks::{self, By};
    let by = operator();
    match cmd {
        WebhookCommand::Add {
            reviewer,
            url,
            events,
        } => {
            let owner = find_reviewer(&app, &reviewer).await?;
            let types = webhooks::parse_types(&events)?;
            let made = webhooks::subscribe(&app, &owner, &url, &types, &by, Client::default()).await?;
            eprintln!(
                "subscription {} of {} to {} for {}; its signing secret, shown this once:",
                made.subscription.id, owner.email, made.subscription.url, made.subscription.event_types
            );
            println!("{}", made.secret);
        }
        WebhookCommand::List { reviewer, format } => {
            let owner = match reviewer {
                Some(email) => Some(find_reviewer(&app, &email).await?),
                None => None,
            };
            let subs = webhooks::list(&app, owner.as_ref()).await?;
            let reviewers = db::reviewers::list(app.db.pool()).await?;
            let email_of = |id: &str| {
                reviewers
                    .iter()
                    .find(|r| r.id == id)
                    .map_or_else(|| id.to_owned(), |r| r.email.clone())
            };
            output::print(
                format,
                &output::Columns {
                    headers: &["id", "reviewer", "url", "events", "state"],
                    optional: &["events"],
                    unbroken: &["id"],
                },
                subs.iter().map(|s| {
                    let state = match &s.disabled_reason {
                        Some(why) => format!("disabled: {why}"),
                        None => "enabled".into(),
                    };
                    (
                        vec![
                            s.id.clone(),
                            email_of(&s.owner_id),
                            s.url.clone(),
                            s.event_types.clone(),
                            state.clone(),
                        ],
                        serde_json::json!({
                            "id": s.id, "reviewer": email_of(&s.owner_id), "url": s.url,
                            "events": s.event_types.split(',').collect::<Vec<_>>(),
                            "enabled": s.disabled_at.is_none(), "disabled_reason": s.disabled_reason,
                            "created_at": format_ms_rfc3339(s.created_at),
                        }),
                    )
                }),
            );
        }
        WebhookCommand::Remove { id } => {
            webhooks::remove(&app, By::Operator(&by), &id, Client::default()).await?;
            println!("subscription {id} is removed");
        }
        WebhookCommand::Rotate { id } => {
            let secret = webhooks::rotate(&app, By::Operator(&by), &id, Client::default()).await?;
            eprintln!("subscription {id} has a new secret; the old one signs beside it for a day:");
            println!("{secret}");
        }
        WebhookCommand::Enable { id } => {
            webhooks::enable(&app, By::Operator(&by), &id, Client::default()).await?;
            println!("subscription {id} is enabled; its waiting messages are sent in order");
        }
        WebhookCommand::Deliveries { id, format } => {
            let (_, messages, attempts) = webhooks::deliveries(&app, By::Operator(&by), &id).await?;
            output::print(
                format,
                &output::Columns {
                    headers: &["message", "event", "when (UTC)", "status", "answer", "took"],
                    optional: &["took", "answer"],
                    unbroken: &["message"],
                },
                attempts.iter().map(|a| {
                    let event = messages
                        .iter()
                        .find(|m| m.id == a.message_id)
                        .map_or("", |m| m.event_type.as_str());
                    let status = a.status.map_or_else(|| "no answer".to_owned(), |s| s.to_string());
                    (
                        vec![
                            a.message_id.clone(),
                            event.to_owned(),
                            format_ms(a.at),
                            status,
                            a.answer.chars().take(80).collect(),
                            format!("{} ms", a.took_ms),
                        ],
                        serde_json::json!({
                            "message_id": a.message_id, "event": event, "at": format_ms_rfc3339(a.at),
                            "status": a.status, "answer": a.answer, "took_ms": a.took_ms,
                        }),
                    )
                }),
            );
        }
        WebhookCommand::Resend { message_id } => {
            webhooks::resend(&app, By::Operator(&by), &message_id, Client::default()).await?;
            println!("message {message_id} is sent again by the running portal");
        }
    }
    Ok(())
}

async fn reviewer(app: Arc<App>, cmd: ReviewerCommand) -> anyhow::Result<()> {
    let cmd_kind = match &cmd {
        ReviewerCommand::Assign { .. } => "assign",
        ReviewerCommand::Disable { .. } => "disable",
        _ => "",
    };
    match cmd {
        ReviewerCommand::Add {
            email,
            admin,
            password_stdin,
        } => {
            let email: Email = email.parse().map_err(|e: &str| anyhow::anyhow!("{e}"))?;
            let password = read_password(password_stdin)?;
            accounts::set_reviewer(&app, &email, &password, admin, &operator()).await?;
            println!(
                "{} {email} can sign in at {}",
                if admin { "admin" } else { "reviewer" },
                app.url("/admin")
            );
        }
        ReviewerCommand::List { format } => {
            let rows = db::reviewers::list(app.db.pool()).await?;
            let assignments = db::policy::assignments(app.db.pool()).await?;
            output::print(
                format,
                &output::Columns {
                    headers: &["email", "role", "models", "notify", "state", "created"],
                    optional: &["created", "notify"],
                    unbroken: &["email"],
                },
                rows.iter().map(|r| {
                    let role = if r.is_admin() { "admin" } else { "reviewer" };
                    let models: Vec<&str> = assignments
                        .iter()
                        .filter(|(_, email)| *email == r.email)
                        .map(|(slug, _)| slug.as_str())
                        .collect();
                    let state = if r.disabled_at.is_some() { "disabled" } else { "active" };
                    (
                        vec![r.email.clone(), role.into(), models.join(", "), r.notify.to_string(), state.into(), format_ms(r.created_at)],
                        serde_json::json!({"id": r.id, "email": r.email, "role": role, "models": models, "notify": r.notify.as_str(), "state": state, "created_at": format_ms_rfc3339(r.created_at)}),
                    )
                }),
            );
        }
        ReviewerCommand::Assign { email, model } | ReviewerCommand::Unassign { email, model } => {
            let assign = matches!(cmd_kind, "assign");
            let email: Email = email.parse().map_err(|e: &str| anyhow::anyhow!("{e}"))?;
            let changed = crate::domain::policy::assign(&app, &model, &email, assign, &operator()).await?;
            println!(
                "{email} {} {model}{}",
                if assign { "reviews" } else { "no longer reviews" },
                if changed { "" } else { " (unchanged)" }
            );
        }
        ReviewerCommand::Disable { email } | ReviewerCommand::Enable { email } => {
            let disable = matches!(cmd_kind, "disable");
            let reviewer = find_reviewer(&app, &email).await?;
            accounts::change_reviewer(&app, &reviewer.id, ReviewerChange::Disabled(disable), &operator())
                .await?;
            println!(
                "{} is {}",
                reviewer.email,
                if disable { "disabled" } else { "enabled" }
            );
        }
        ReviewerCommand::Notify { email, how } => {
            let reviewer = find_reviewer(&app, &email).await?;
            accounts::change_reviewer(&app, &reviewer.id, ReviewerChange::Notify(how), &operator()).await?;
            println!("{} hears of waiting applications: {how}", reviewer.email);
        }
    }
    Ok(())
}

async fn model(app: Arc<App>, cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Create { slug, title, terms } => {
            let slug: Slug = slug.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let terms = match terms {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => "Use these weights for research only. Do not redistribute them.".to_owned(),
            };
            let model = models::create(&app, &slug, &title, &terms, &operator()).await?;
            println!(
                "created model {} at {}",
                model.slug,
                app.url(&format!("/models/{}", model.slug))
            );
        }
        ModelCommand::Policy {
            slug,
            approvals,
            auto_approve_domains,
            target_days,
        } => {
            let model = db::models::find_model_by_slug(app.db.pool(), &slug)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no model {slug}"))?;
            let current = db::policy::find(app.db.pool(), &model.id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no model {slug}"))?;
            let change = crate::domain::policy::PolicyChange {
                approvals_needed: approvals.unwrap_or(current.approvals_needed),
                auto_approve_domains: auto_approve_domains
                    .unwrap_or_else(|| current.auto_approve_domains.clone().unwrap_or_default()),
                review_target_days: target_days.unwrap_or(current.review_target_days),
            };
            crate::domain::policy::set(&app, &slug, &change, &operator()).await?;
            let auto = crate::domain::reviews::allowed_domains(Some(&change.auto_approve_domains));
            println!(
                "{slug}: {} approval(s) from distinct reviewers, overdue after {} days, automatic approval {}",
                change.approvals_needed,
                change.review_target_days,
                if auto.is_empty() {
                    "off".to_owned()
                } else {
                    format!("for {}", auto.join(", "))
                }
            );
        }
        ModelCommand::Quota {
            slug,
            bytes,
            files,
            unlimited,
        } => {
            let slug: Slug = slug.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            anyhow::ensure!(
                unlimited || bytes.is_some() || files.is_some(),
                "say --bytes, --files or --unlimited"
            );
            models::set_quota(&app, &slug, bytes, files, &operator()).await?;
            println!("quota of {slug} set");
        }
        ModelCommand::Publish {
            slug,
            dir,
            release,
            exclude,
            follow_symlinks,
            card,
            chunk_size,
        } => {
            let slug: Slug = slug.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let bar = if terminal {
                indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:8} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                )
            } else {
                indicatif::ProgressBar::hidden()
            };
            let progress = models::PublishProgress {
                bar: bar.clone(),
                on_file: Box::new(move |f| {
                    bar.suspend(|| {
                        println!(
                            "{} {}  {}  {} bytes",
                            if f.uploaded { "stored " } else { "present" },
                            f.sha256,
                            f.name,
                            f.size
                        );
                    });
                }),
            };
            let report = if dir.starts_with("s3://") {
                anyhow::ensure!(
                    !follow_symlinks,
                    "--follow-symlinks is for a directory: a bucket has no links"
                );
                let source = models::BucketSource {
                    url: dir,
                    exclude,
                    card,
                };
                models::publish_from_bucket(
                    &app,
                    &slug,
                    &source,
                    release.as_deref(),
                    chunk_size,
                    &operator(),
                    &progress,
                )
                .await?
            } else {
                let source = models::Source {
                    dir: PathBuf::from(dir),
                    follow_symlinks,
                    exclude,
                    card,
                };
                models::publish_from(
                    &app,
                    &slug,
                    &source,
                    release.as_deref(),
                    chunk_size,
                    &operator(),
                    &progress,
                )
                .await?
            };
            if !report.left_out.is_empty() {
                println!("left out: {}", report.left_out.join(", "));
            }
            println!(
                "published release {} of {slug} with {}",
                report.release,
                crate::types::count(report.files.len() as u64, "file")
            );
        }
        ModelCommand::Questions { slug, file } => {
            let slug: Slug = slug.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            match file {
                Some(path) => {
                    let json = if path.as_os_str() == "-" {
                        let mut input = String::new();
                        std::io::stdin()
                            .read_to_string(&mut input)
                            .context("cannot read the questions from stdin")?;
                        input
                    } else {
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?
                    };
                    let questions = models::set_questions(&app, &slug, &json, &operator()).await?;
                    println!(
                        "{}",
                        crate::domain::questions::asks(slug.as_str(), questions.len())
                    );
                }
                None => {
                    let model = db::models::find_model_by_slug(app.db.pool(), slug.as_str())
                        .await?
                        .ok_or_else(|| models::ModelError::NotFound(slug.to_string()))?;
                    let questions = crate::domain::questions::stored(&model.questions);
                    println!("{}", serde_json::to_string_pretty(&questions)?);
                }
            }
        }
        ModelCommand::Terms { slug, file } => {
            let slug: Slug = slug.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let terms =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let version = models::set_terms(&app, &slug, &terms, &operator()).await?;
            println!("{slug} terms are now version {version}");
        }
        ModelCommand::ReapplyAfter { slug, days } => {
            let slug: Slug = slug.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            models::set_reapply_after(&app, &slug, i64::from(days), &operator()).await?;
            println!("a researcher denied access to {slug} may apply again after {days} days");
        }
        ModelCommand::List { format } => {
            let models = db::models::list_models(app.db.pool()).await?;
            output::print(
                format,
                &output::Columns {
                    headers: &["slug", "title", "terms version", "created"],
                    optional: &["created", "terms version"],
                    unbroken: &["slug"],
                },
                models.iter().map(|m| {
                    (
                        vec![m.slug.clone(), m.title.clone(), m.terms_version.to_string(), format_ms(m.created_at)],
                        serde_json::json!({"id": m.id, "slug": m.slug, "title": m.title, "terms_version": m.terms_version, "created_at": format_ms_rfc3339(m.created_at)}),
                    )
                }),
            );
        }
    }
    Ok(())
}

async fn grant(app: Arc<App>, cmd: GrantCommand) -> anyhow::Result<()> {
    match cmd {
        GrantCommand::List { format } => {
            let now = now_ms();
            let grants = db::grants::list(app.db.pool()).await?;
            let rows: Vec<GrantLine> = grants
                .iter()
                .map(|g| GrantLine {
                    id: g.id.clone(),
                    researcher: g.email.clone(),
                    model: g.model_slug.clone(),
                    created_at: g.created_at,
                    expires_at: g.expires_at,
                    state: GrantState::of(g, now).as_str().to_owned(),
                    revoked_reason: g.revoked_reason.clone(),
                })
                .collect();
            print_grants(&rows, format);
        }
        GrantCommand::Extend { id, days } => {
            // The operator holds the database: an extension from here is an
            // override of the model's approval policy, and logged as one.
            let actor = operator();
            let by = crate::domain::renewals::ExtendBy::Override { actor: &actor };
            if let crate::domain::renewals::Extension::Extended { until } =
                crate::domain::renewals::extend(&app, &id, days, by, Client::default()).await?
            {
                let grant = db::grants::find_view(app.db.pool(), &id)
                    .await?
                    .context("the grant vanished while it was extended")?;
                println!(
                    "grant {} of {} for {} now ends {} UTC",
                    grant.id,
                    grant.email,
                    grant.model_slug,
                    format_ms(until)
                );
            }
        }
        GrantCommand::Revoke { id, reason } => {
            let grant = grants::revoke(&app, &id, &reason, &operator(), Client::default()).await?;
            println!(
                "revoked grant {} of {} for {}",
                grant.id, grant.email, grant.model_slug
            );
        }
    }
    Ok(())
}

/// A grant as `grant list` prints it, read locally or from a portal.
pub(crate) struct GrantLine {
    pub(crate) id: String,
    pub(crate) researcher: String,
    pub(crate) model: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) state: String,
    pub(crate) revoked_reason: Option<String>,
}

pub(crate) fn print_grants(grants: &[GrantLine], format: Listing) {
    output::print(
        format,
        &output::Columns {
            headers: &["id", "researcher", "model", "created", "expires", "state"],
            optional: &["created"],
            unbroken: &["id", "expires"],
        },
        grants.iter().map(|g| {
            (
                vec![
                    g.id.clone(),
                    g.researcher.clone(),
                    g.model.clone(),
                    format_ms(g.created_at),
                    format_ms(g.expires_at),
                    g.state.clone(),
                ],
                serde_json::json!({
                    "id": g.id, "researcher": g.researcher, "model": g.model,
                    "created_at": format_ms_rfc3339(g.created_at), "expires_at": format_ms_rfc3339(g.expires_at),
                    "state": g.state, "revoked_reason": g.revoked_reason,
                }),
            )
        }),
    );
}

async fn keys(app: Arc<App>, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Rotate => {
            let kid = crate::crypto::links::rotate(&app.db, &operator()).await?;
            println!("new link-signing key {kid}; links signed with older keys stay valid until they expire");
        }
        KeysCommand::List { format } => {
            let keys = db::keys::list(app.db.pool(), crate::crypto::links::LINK_KEYS).await?;
            let current = keys
                .iter()
                .find(|k| k.retired_at.is_none())
                .map(|k| k.kid.clone());
            output::print(
                format,
                &output::Columns {
                    headers: &["key id", "created", "signs new links", "retired"],
                    optional: &[],
                    unbroken: &["key id"],
                },
                keys.iter().map(|k| {
                    let signs = current.as_deref() == Some(k.kid.as_str());
                    (
                        vec![
                            k.kid.clone(),
                            format_ms(k.created_at),
                            if signs { "yes" } else { "no" }.into(),
                            k.retired_at.map(format_ms).unwrap_or_default(),
                        ],
                        serde_json::json!({
                            "kid": k.kid,
                            "created_at": format_ms_rfc3339(k.created_at),
                            "current": signs,
                            "retired_at": k.retired_at.map(format_ms_rfc3339),
                        }),
                    )
                }),
            );
        }
        KeysCommand::Retire { kid } => {
            let signing = crate::crypto::links::retire(&app.db, &kid, &operator()).await?;
            println!(
                "link-signing key {kid} is retired: links it signed are refused; key {signing} signs new links"
            );
        }
    }
    Ok(())
}

async fn hash(files: Vec<PathBuf>, chunk_size: Option<u64>) -> anyhow::Result<()> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let semaphore = Arc::new(tokio::sync::Semaphore::new(workers));
    let mut tasks = Vec::with_capacity(files.len());
    for path in files {
        let permit = semaphore.clone().acquire_owned().await?;
        tasks.push(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let digest = models::hash_file(&path, chunk_size, &indicatif::ProgressBar::hidden());
            (path, digest)
        }));
    }
    for task in tasks {
        let (path, digest) = task.await?;
        let digest = digest?;
        println!("{}  {}", digest.sha256, path.display());
        if chunk_size.is_some() {
            for (i, chunk) in digest.chunks.iter().enumerate() {
                println!("  chunk {i}: {chunk}");
            }
        }
    }
    Ok(())
}
