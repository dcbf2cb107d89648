use tracing_subscriber::EnvFilter;
use weightgate::{cli, config::LogFormat};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::parse();
    let filter =
        EnvFilter::try_from_env("WEIGHTGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colour only for a person at a terminal who has not asked for none
    // (https://no-color.org): a log redirected to a file stays plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        weightgate::cli::Cli::command().debug_assert();
    }
}
