//! Domains as processes: spawn the current executable in a *role*, and run that role in the
//! child (D19).
//!
//! The parent (a test, `pore demo`) builds a [`DomainCommand`] with
//! [`crate::Hypervisor::domain_command`]; the child starts normally (the same test binary or
//! `main`) and, first thing, calls [`run_child_role`], which recognises the role from the
//! environment, runs it and exits. The child reaches the broker with
//! [`crate::SimDomain::connect`] and talks back to its parent with [`report`] lines on stdout,
//! which the parent reads with [`DomainProcess::read_report`].
//!
//! ```no_run
//! use pore_backend_sim::{process, Hypervisor, SimDomain};
//!
//! #[test]
//! fn my_driver_between_processes() {
//!     // In the child this runs the role and exits; in the parent it returns at once.
//!     process::run_child_role(|role, args| match role {
//!         "server" => {
//!             let dom = SimDomain::connect().expect("broker");
//!             process::report(&format!("domid {}", dom.id()));
//!             0
//!         }
//!         _ => 2,
//!     });
//!     let hv = Hypervisor::start_unexported().unwrap();
//!     let mut child = hv
//!         .domain_command("server")
//!         .test("my_driver_between_processes")
//!         .spawn()
//!         .unwrap();
//!     let line = child.read_report(std::time::Duration::from_secs(10)).unwrap();
//!     assert!(line.starts_with("domid "));
//! }
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pore_core::ErrorKind;

use crate::error::{Result, SimError};

/// Environment variable naming the role a spawned domain process plays.
pub const ROLE_ENV: &str = "PORE_SIM_ROLE";
/// Environment variable carrying the role's arguments (newline-separated).
pub const ARGS_ENV: &str = "PORE_SIM_ARGS";
/// Prefix of the stdout lines a child sends to its parent.
const REPORT_PREFIX: &str = "PORE-SIM-REPORT ";

/// If this process was spawned as a domain process, runs `role(name, args)` and exits with its
/// return value as the exit code; otherwise returns at once.
///
/// Call it first thing in `main`, or at the top of the `#[test]` function that spawns the
/// children (they re-run that same test).
pub fn run_child_role(role: impl FnOnce(&str, &[String]) -> i32) {
    let Ok(name) = std::env::var(ROLE_ENV) else {
        return;
    };
    let args: Vec<String> = std::env::var(ARGS_ENV)
        .map(|a| {
            a.split('\n')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let code = role(&name, &args);
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Sends one line to the parent process (read there with [`DomainProcess::read_report`]).
pub fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{REPORT_PREFIX}{}", line.replace('\n', " "));
    let _ = out.flush();
}

/// In a domain process: waits up to `timeout` for the next line its parent sent with
/// [`DomainProcess::tell`].
pub fn listen(timeout: Duration) -> Result<String> {
    static LINES: OnceLock<Mutex<mpsc::Receiver<String>>> = OnceLock::new();
    let lines = LINES.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("pore-sim-parent-in".into())
            .spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the stdin reader");
        }
        Mutex::new(rx)
    });
    let rx = lines.lock().unwrap_or_else(|p| p.into_inner());
    rx.recv_timeout(timeout).map_err(|e| match e {
        mpsc::RecvTimeoutError::Timeout => {
            SimError::refused(ErrorKind::TimedOut, "the parent sent nothing in time")
        }
        mpsc::RecvTimeoutError::Disconnected => {
            SimError::refused(ErrorKind::PeerGone, "the parent closed our input")
        }
    })
}

/// How to start a domain process: the current executable, in a role.
#[derive(Debug)]
pub struct DomainCommand {
    cmd: Command,
    args: Vec<String>,
}

impl DomainCommand {
    pub(crate) fn new(socket: PathBuf, role: &str) -> Result<DomainCommand> {
        let exe =
            std::env::current_exe().map_err(SimError::os("finding the current executable"))?;
        let mut cmd = Command::new(exe);
        // A child of a joined process must not join by accident: `join` sets it explicitly.
        cmd.env_remove(crate::env::JOIN_ENV)
            .env(crate::env::SOCKET_ENV, socket)
            .env(ROLE_ENV, role)
            .env(crate::env::NAME_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Ok(DomainCommand {
            cmd,
            args: Vec::new(),
        })
    }

    /// Re-runs only the libtest test `name` in the child (`<name> --exact --nocapture`): use it
    /// when the children are spawned from a `#[test]` function.
    pub fn test(mut self, name: &str) -> Self {
        self.cmd
            .args([name, "--exact", "--nocapture", "--test-threads=1", "-q"]);
        self
    }

    /// Adds an argument for the role (passed through [`ARGS_ENV`]; no newlines).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Names the domain (default: the role).
    pub fn name(mut self, name: &str) -> Self {
        self.cmd.env(crate::env::NAME_ENV, name);
        self
    }

    /// Makes the child one more process of the live domain `dom` instead of a new domain:
    /// its [`crate::SimDomain::connect`] joins `dom` (through [`crate::JOIN_ENV`]). When the
    /// child exits or is killed, only its own grants, mappings and ports are released and its
    /// unmap notifications fire; the domain lives on.
    pub fn join(mut self, dom: pore_core::DomId) -> Self {
        self.cmd.env(crate::env::JOIN_ENV, dom.0.to_string());
        self
    }

    /// Starts the process.
    pub fn spawn(mut self) -> Result<DomainProcess> {
        self.cmd.env(ARGS_ENV, self.args.join("\n"));
        let mut child = self
            .cmd
            .spawn()
            .map_err(SimError::os("spawning a domain process"))?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::Builder::new()
                .name("pore-sim-child-out".into())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if let Some(msg) = line.strip_prefix(REPORT_PREFIX) {
                            if tx.send(msg.to_owned()).is_err() {
                                break;
                            }
                        }
                    }
                })
                .map_err(SimError::os("starting a reader thread"))?;
        }
        let stdin = child.stdin.take();
        Ok(DomainProcess {
            child,
            stdin,
            reports: rx,
        })
    }
}

/// A running domain process. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct DomainProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    reports: mpsc::Receiver<String>,
}

impl DomainProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the next [`report`] line of the child.
    pub fn read_report(&mut self, timeout: Duration) -> Result<String> {
        self.reports.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => SimError::refused(
                ErrorKind::TimedOut,
                "the domain process reported nothing in time",
            ),
            mpsc::RecvTimeoutError::Disconnected => {
                SimError::refused(ErrorKind::PeerGone, "the domain process closed its output")
            }
        })
    }

    /// Sends one line to the child (read there with [`listen`]).
    pub fn tell(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            SimError::refused(ErrorKind::Closed, "the domain process's input is closed")
        })?;
        writeln!(stdin, "{}", line.replace('\n', " "))
            .and_then(|()| stdin.flush())
            .map_err(SimError::os("writing to a domain process"))
    }

    /// Kills the process with SIGKILL (no clean-up of its own runs: the broker must notice).
    pub fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .map_err(SimError::os("killing a domain process"))
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(SimError::os("waiting for a domain process"))?
            {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for DomainProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
