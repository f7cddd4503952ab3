//! The subcommands of the `ocellus` binary and what they share: loading the config, logging, exit codes.

pub mod bench;
pub mod cameras;
pub mod check;
pub mod infer;
pub mod read;
pub mod record;
pub mod replay;
pub mod run;
pub mod top;

use std::path::Path;

use ocellus::config::{Config, LogFormat, LoggingConfig};

/// `-v` / `-q` from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Verbosity {
    pub verbose: u8,
    pub quiet: bool,
}

/// The process exit code of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// Something failed while running (a source, a model run, writing an output).
    Runtime = 1,
    /// The configuration or the model bundle is not usable.
    Config = 2,
}

/// Why a subcommand failed: the exit code and the message (one line per problem).
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn config(message: impl std::fmt::Display) -> Self {
        Failure {
            code: Code::Config,
            message: message.to_string(),
        }
    }

    pub fn runtime(message: impl std::fmt::Display) -> Self {
        Failure {
            code: Code::Runtime,
            message: message.to_string(),
        }
    }
}

/// The exit code comes from the error's kind.
impl From<ocellus::runtime::BuildError> for Failure {
    fn from(e: ocellus::runtime::BuildError) -> Self {
        Failure {
            code: match e.kind {
                ocellus::runtime::ErrorKind::Config => Code::Config,
                ocellus::runtime::ErrorKind::Runtime => Code::Runtime,
            },
            message: e.message,
        }
    }
}

/// Loads `path`, or the embedded default without one.
pub fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    Config::load_or_default(path).map_err(Failure::config)
}

/// Installs the tracing subscriber: the config's level unless `-v`/`-q` say otherwise; logs go to stderr.
pub fn init_logging(config: Option<&LoggingConfig>, v: Verbosity) {
    use tracing::Level;
    let level = if v.quiet {
        Level::ERROR
    } else {
        match v.verbose {
            0 => config.map(|c| c.level).unwrap_or(Level::INFO),
            1 => Level::DEBUG,
            _ => Level::TRACE,
        }
    };
    let json = config.is_some_and(|c| c.format == LogFormat::Json);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second initialisation (never in this binary) would only be refused; logging is not worth a failure.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
