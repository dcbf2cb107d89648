//! `weightgate audit`: read and check the audit log.

use std::sync::Arc;

use clap::Subcommand;

use super::output::{self, Format};
use crate::{
    app::App,
    audit,
    db::{self, audit::Filter},
    types::{format_ms, format_ms_rfc3339, now_ms},
};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List events, oldest first.
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only events of this grant.
        #[arg(long)]
        grant: Option<String>,
        /// Only events of this action, e.g. file.fetch.
        #[arg(long)]
        action: Option<String>,
        /// Only events newer than this, e.g. 7d or 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Recompute the hash chain and report the first event that does not fit.
    Verify,
}

pub async fn run(app: Arc<App>, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List {
            format,
            grant,
            action,
            since,
            limit,
        } => {
            let filter = Filter {
                grant_id: grant,
                action,
                since_ms: since.map(|d| now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                limit: limit.max(1),
            };
            let events = db::audit::list(app.db.pool(), &filter).await?;
            let range = |e: &db::audit::EventRow| match (e.range_start, e.range_end) {
                (Some(s), Some(t)) => format!("{s}-{t}"),
                _ => String::new(),
            };
            let opt = |v: &Option<String>| v.clone().unwrap_or_default();
            output::print(
                format,
                &[
                    "seq",
                    "time (UTC)",
                    "action",
                    "outcome",
                    "reason",
                    "actor",
                    "subject",
                    "grant",
                    "bytes",
                    "client",
                    "user agent",
                ],
                events.iter().map(|e| {
                    (
                        vec![
                            e.seq.to_string(),
                            format_ms(e.at),
                            e.action.clone(),
                            e.outcome.clone(),
                            opt(&e.reason),
                            opt(&e.actor),
                            opt(&e.subject),
                            opt(&e.grant_id),
                            range(e),
                            opt(&e.client_ip),
                            opt(&e.user_agent).chars().take(40).collect(),
                        ],
                        {
                            let mut json = serde_json::to_value(e).unwrap_or_default();
                            json["time"] = format_ms_rfc3339(e.at).into();
                            json
                        },
                    )
                }),
            );
        }
        AuditCommand::Verify => match audit::verify_chain(&app.db).await? {
            Ok(n) => println!("audit log intact: {n} events, chain verified"),
            Err(problem) => anyhow::bail!("audit log damaged: {problem}"),
        },
    }
    Ok(())
}
