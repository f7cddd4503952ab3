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

/// Installs the tracing subscriber: the config's level unless `-v`/`-q` say otherwise. Logs go to stderr
/// as text or JSON lines, or to journald natively (`logging.format`; `auto`, the default, picks journald
/// when stderr is the journal, as under systemd, and text otherwise).
pub fn init_logging(config: Option<&LoggingConfig>, v: Verbosity) {
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = if v.quiet {
        Level::ERROR
    } else {
        match v.verbose {
            0 => config.map(|c| c.level).unwrap_or(Level::INFO),
            1 => Level::DEBUG,
            _ => Level::TRACE,
        }
    };
    let format = config.map_or(LogFormat::Auto, |c| c.format);
    let mut journald_error = None;
    if format == LogFormat::Journald || (format == LogFormat::Auto && stderr_is_journal()) {
        match tracing_journald::layer() {
            Ok(layer) => {
                // Field names as they are (CAMERA=, STAGE=, not the crate's default F_CAMERA=), so a person
                // filters with `journalctl -u ocellus CAMERA=0`.
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("ocellus".into());
                let _ = tracing_subscriber::registry()
                    .with(tracing_subscriber::filter::LevelFilter::from_level(level))
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => journald_error = Some(e),
        }
    }
    // Colours only for a terminal: in a file or the journal the escape codes would split `camera=0` apart.
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // A second initialisation (never in this binary) would only be refused; logging is not worth a failure.
    let _ = if format == LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Some(e) = journald_error {
        tracing::warn!(
            error = %e,
            "logging.format: cannot reach journald's socket (/run/systemd/journal/socket); logging text to \
             stderr instead"
        );
    }
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM` to `DEVICE:INODE` of the stream
/// it connects to stdout/stderr, and a process should log natively only when its stderr is still that
/// one (not redirected by a shell in between).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}
