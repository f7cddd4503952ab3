//! `ocellus record --trigger` talking to the running service: a Unix stream socket (`recorder.socket`,
//! default `<recorder.dir>/trigger.sock`), mode 0660, served by the thread `ocellus-rec-ctl`.
//!
//! Who may trigger: the kernel checks the socket file's permissions (owner and group may connect), then the
//! server checks the peer's credentials (`SO_PEERCRED`: uid, gid) against its own: root, the service's user,
//! or a process whose group is the service's group (its effective gid, or one of its supplementary groups
//! when `/proc/<pid>/status` can be read). Anyone else is answered `refused ...` and logged.
//!
//! Protocol: one request line, one reply line, then the connection closes.
//!
//! ```text
//! -> trigger            <- accepted <n> | joined <n> | dropped <why> | refused <why> | error <why>
//! -> trigger wait       <- recorded <path> | failed <why> | dropped <why> | refused <why> | error <why>
//! ```
//!
//! `accepted <n>`: recording number n will be written; `joined <n>`: a recording whose window is still
//! filling takes this trigger too; `dropped`: the writer is still writing the previous recording (the
//! trigger is counted as dropped).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{External, Outcome, TriggerHandle};

/// How long the server waits for the inference thread to take a trigger.
const TAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `trigger wait` waits for the recording to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the control socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("recorder.socket {}: another ocellus answers on it: stop it, or give this one another recorder.socket", path.display())]
    InUse { path: PathBuf },
    #[error("recorder.socket {}: cannot {what}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The identity a peer connected with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, when `/proc/<pid>/status` could be read (empty otherwise).
    pub groups: Vec<u32>,
}

/// Whether `peer` may trigger a recording of a service running as `uid`:`gid`; the refusal says why.
pub fn authorize(peer: &Peer, uid: u32, gid: u32) -> Result<(), String> {
    if peer.uid == 0 || peer.uid == uid || peer.gid == gid || peer.groups.contains(&gid) {
        return Ok(());
    }
    Err(format!(
        "uid {} (gid {}) is not root, the service's user (uid {uid}) or in its group (gid {gid}): run it as one of them, e.g. with sudo -u or sg",
        peer.uid, peer.gid
    ))
}

/// The supplementary groups of `pid` from /proc (empty when hidden, e.g. systemd's ProtectProc=invisible).
fn groups_of(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn peer_of(stream: &UnixStream) -> std::io::Result<Peer> {
    let cred = rustix::net::sockopt::socket_peercred(stream)?;
    let pid = cred.pid.as_raw_nonzero().get();
    Ok(Peer {
        pid,
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
        groups: groups_of(pid),
    })
}

/// The control socket's server thread.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Binds `path` (mode 0660; a stale socket file nobody answers on is replaced) and serves it.
    pub fn start(path: &Path, handle: TriggerHandle) -> Result<ControlServer, ControlError> {
        let io = |what: &'static str| {
            move |source| ControlError::Io {
                what,
                path: path.to_owned(),
                source,
            }
        };
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io("create its directory"))?;
        }
        let listener = UnixListener::bind(path).map_err(io("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(io("set its mode to 0660"))?;
        listener.set_nonblocking(true).map_err(io("configure"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ocellus-rec-ctl".into())
            .spawn(move || serve(listener, handle, &flag))
            .map_err(io("start its thread"))?;
        Ok(ControlServer {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket file.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: UnixListener, handle: TriggerHandle, stop: &AtomicBool) {
    let (uid, gid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, &handle, uid, gid) {
                    tracing::warn!(error = %e, "recorder control connection failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!(error = %e, "recorder control socket: accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn answer(stream: UnixStream, handle: &TriggerHandle, uid: u32, gid: u32) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let peer = peer_of(&stream)?;
    let mut out = stream.try_clone()?;
    if let Err(why) = authorize(&peer, uid, gid) {
        tracing::warn!(
            pid = peer.pid,
            uid = peer.uid,
            gid = peer.gid,
            "recorder trigger refused"
        );
        return writeln!(out, "refused {why}");
    }
    let mut line = String::new();
    BufReader::new(stream.take(256)).read_line(&mut line)?;
    let reply = match line.trim() {
        "trigger" => trigger(handle, false, peer.pid),
        "trigger wait" => trigger(handle, true, peer.pid),
        other => format!("error unknown request '{other}' (expected 'trigger' or 'trigger wait')"),
    };
    writeln!(out, "{reply}")
}

fn trigger(handle: &TriggerHandle, wait: bool, pid: i32) -> String {
    let seq = handle.request(External::Command);
    tracing::info!(pid, "recording triggered by command");
    let Some(outcome) = handle.outcome(seq, TAKE_TIMEOUT) else {
        return format!(
            "error the inference thread did not take the trigger within {} s (is the pipeline running?)",
            TAKE_TIMEOUT.as_secs()
        );
    };
    let number = match outcome {
        Outcome::Dropped => {
            return "dropped the writer is still writing the previous recording (counted as dropped); try again".into()
        }
        Outcome::Off => return "error this ocellus is capturing, not running a flight recorder".into(),
        Outcome::Accepted(n) | Outcome::Joined(n) if !wait => {
            let verb = if matches!(outcome, Outcome::Accepted(_)) {
                "accepted"
            } else {
                "joined"
            };
            return format!("{verb} {n}");
        }
        Outcome::Accepted(n) | Outcome::Joined(n) => n,
    };
    match handle.written(number, WRITE_TIMEOUT) {
        Some(Ok(path)) => format!("recorded {}", path.display()),
        Some(Err(why)) => format!("failed {why}"),
        None => format!(
            "error recording {number} was not written within {} s",
            WRITE_TIMEOUT.as_secs()
        ),
    }
}

/// Why `ocellus record --trigger` could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot connect to {}: {source} (is ocellus running with [recorder] enabled = true, and is this its recorder.socket?)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Sends one request over the socket at `path` and returns the reply line.
pub fn request(path: &Path, wait: bool) -> Result<String, RequestError> {
    let mut stream = UnixStream::connect(path).map_err(|source| RequestError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let io = |source| RequestError::Io {
        path: path.to_owned(),
        source,
    };
    let timeout = if wait { WRITE_TIMEOUT } else { TAKE_TIMEOUT } + Duration::from_secs(5);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    writeln!(stream, "{}", if wait { "trigger wait" } else { "trigger" }).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    Ok(reply.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn only_root_the_user_and_the_group_may_trigger() {
        assert!(authorize(&peer(0, 0, &[]), 998, 998).is_ok());
        assert!(authorize(&peer(998, 5, &[]), 998, 998).is_ok());
        assert!(authorize(&peer(1000, 998, &[]), 998, 998).is_ok());
        assert!(authorize(&peer(1000, 1000, &[27, 998]), 998, 998).is_ok());
        let why = authorize(&peer(1000, 1000, &[27]), 998, 998).unwrap_err();
        assert!(why.contains("uid 1000") && why.contains("gid 998"), "{why}");
    }
}
