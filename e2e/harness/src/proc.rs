//! Guarded child processes.
//!
//! A [`Proc`] runs in its own process group, with stdout and stderr written
//! to files in its own temp dir (under `<target>/e2e-tmp`). Dropping it stops
//! the process (SIGTERM to the group, SIGKILL after 2 s) and reaps it. The
//! temp dir is removed then, unless the thread is panicking (a failing test)
//! or `E2E_KEEP_TMP` is set: then it is kept and its path printed to stderr.

use crate::paths::Paths;
use crate::{Context, Error, Result};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Grace period between SIGTERM and SIGKILL in [`Proc::stop`].
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// A fresh temp dir under `<target>/e2e-tmp` (falls back to the system temp
/// dir), named after `prefix`.
pub fn test_dir(prefix: &str) -> Result<TempDir> {
    let root = Paths::discover().tmp_root();
    let name = format!("{prefix}-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&name);
    match std::fs::create_dir_all(&root).and_then(|()| builder.tempdir_in(&root)) {
        Ok(dir) => Ok(dir),
        Err(_) => builder
            .tempdir()
            .context(|| format!("cannot create a temp dir for {prefix}")),
    }
}

/// A child process that is stopped and reaped on drop.
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    dir: Option<TempDir>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` in a new temp dir (see [`test_dir`]); `name` labels logs
    /// and errors.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        Self::spawn_in(test_dir(name)?, name, cmd)
    }

    /// Spawns `cmd` with its output captured in `dir`, which the `Proc` then
    /// owns (so files the caller wrote there, e.g. configs, live as long as it).
    ///
    /// The process gets its own process group, stdin from /dev/null, stdout in
    /// `<dir>/<name>.stdout` and stderr in `<dir>/<name>.stderr`.
    pub fn spawn_in(dir: TempDir, name: &str, cmd: &mut Command) -> Result<Proc> {
        let stdout_path = dir.path().join(format!("{name}.stdout"));
        let stderr_path = dir.path().join(format!("{name}.stderr"));
        let stdout = File::create(&stdout_path)
            .context(|| format!("cannot create {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .context(|| format!("cannot create {}", stderr_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            status: None,
            dir: Some(dir),
            stdout_path,
            stderr_path,
        })
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temp dir holding the output files (and whatever the caller put there).
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => Path::new("."),
        }
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// stderr and stdout, labelled, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "----- {name} stderr ({dir}) -----\n{err}\n----- {name} stdout -----\n{out}\n----- end of {name} logs -----",
            name = self.name,
            dir = self.dir().display(),
            err = self.stderr(),
            out = self.stdout(),
        )
    }

    /// Exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .context(|| format!("cannot wait for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a complete stdout line containing `needle` and returns it
    /// (without the newline). Fails if the process exits first or after `timeout`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_line_in(needle, timeout, false)
    }

    /// Like [`Proc::wait_for_line`] but looks in stderr (where Envoy logs).
    pub fn wait_for_stderr_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_line_in(needle, timeout, true)
    }

    fn wait_for_line_in(
        &mut self,
        needle: &str,
        timeout: Duration,
        stderr: bool,
    ) -> Result<String> {
        let path = if stderr {
            self.stderr_path.clone()
        } else {
            self.stdout_path.clone()
        };
        let find = |text: &str| {
            text.split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .find(|l| l.contains(needle))
                .map(|l| l.trim_end_matches(['\r', '\n']).to_string())
        };
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_wait()?;
            if let Some(line) = find(&read_lossy(&path)) {
                return Ok(line);
            }
            if let Some(status) = exited {
                return Err(Error::new(format!(
                    "{} exited ({status}) before printing a line containing `{needle}`\n{}",
                    self.name,
                    self.logs()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "{} printed no line containing `{needle}` within {timeout:?}\n{}",
                    self.name,
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the process group, if still running.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pgid = self.pgid()?;
        // SAFETY: kill(2) has no memory-safety preconditions; `-pgid` targets
        // the group of our own, not yet reaped, child.
        let rc = unsafe { libc::kill(-pgid, signal) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(Error::new(format!(
                    "cannot signal {} ({signal}): {err}",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// Freezes the process (SIGSTOP), e.g. to make a service unresponsive
    /// without closing its sockets.
    /// Returns once every thread of the process is stopped, so that nothing
    /// sent afterwards is answered.
    pub fn pause(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)?;
        let tasks = format!("/proc/{}/task", self.pid());
        crate::wait_for("process stopped", Duration::from_secs(5), || {
            let all_stopped = std::fs::read_dir(&tasks).ok()?.all(|t| {
                t.ok()
                    .and_then(|t| std::fs::read_to_string(t.path().join("stat")).ok())
                    .and_then(|stat| {
                        stat.rsplit_once(')')
                            .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
                    })
                    .is_some_and(|state| state == "T" || state == "t")
            });
            all_stopped.then_some(())
        })
    }

    /// Undoes [`Proc::pause`] (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Kills the process group at once (SIGKILL) and reaps the process.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        self.reap()
    }

    /// Stops the process: SIGTERM to its group, SIGKILL after [`STOP_GRACE`],
    /// then reaps it. Idempotent; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        // A paused process only handles SIGTERM once continued.
        self.signal(libc::SIGCONT)?;
        if let Some(status) = self.wait_exit(STOP_GRACE)? {
            return Ok(status);
        }
        self.kill()
    }

    fn reap(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .context(|| format!("cannot wait for {}", self.name))?;
        self.status = Some(status);
        Ok(status)
    }

    fn pgid(&self) -> Result<libc::pid_t> {
        libc::pid_t::try_from(self.child.id())
            .map_err(|_| Error::new(format!("pid of {} out of range", self.name)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("e2e: stopping {}: {e}", self.name);
        }
        let keep = std::thread::panicking()
            || std::env::var_os("E2E_KEEP_TMP").is_some_and(|v| !v.is_empty());
        if keep {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!("e2e: kept the files of {} in {}", self.name, path.display());
            }
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
