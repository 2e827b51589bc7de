//! What keeps a fleet's processes tied to it: one fleet per state directory (a lock), instances
//! that die with their fleet (a parent-death signal), and the reaping at start of whatever a
//! fleet that crashed left running (processes marked with their fleet's state directory).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The environment variable every instance process (and so everything it starts) carries: the
/// canonical path of its fleet's state directory.
pub const FLEET_ENV: &str = "IKUKANTAI_FLEET_STATE";

/// The lock's file under the state directory.
const LOCK_FILE: &str = "fleet.lock";

/// Holds the state directory for one fleet; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Another fleet holds the state directory.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Held by a live fleet.
    #[error(
        "state directory {dir} is in use by another fleet ({holder}); stop it first, or pass another --state-dir"
    )]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// What the holder wrote about itself (its PID and API address).
        holder: String,
    },
    /// The lock file could not be opened or written. Its message does not repeat its source's:
    /// print the chain.
    #[error("state directory {dir}: lock file")]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl StateLock {
    /// Takes the state directory's lock (an advisory `flock`, gone with its holder however it
    /// ends) and writes `holder` into it for whoever finds it taken.
    pub fn acquire(dir: &Path, holder: &str) -> Result<Self, LockError> {
        let io = |source| LockError::Io { dir: dir.to_owned(), source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = text.trim();
                let holder = if holder.is_empty() { "a fleet that is starting" } else { holder };
                return Err(LockError::Held { dir: dir.to_owned(), holder: holder.to_owned() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "pid {}, {holder}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// Kills every process left by an earlier fleet of this state directory (marked with
/// [`FLEET_ENV`]); call with the lock held, so that no live fleet owns them. Returns their PIDs.
pub fn reap_orphans(state_dir: &Path) -> Vec<u32> {
    let marker = format!("{FLEET_ENV}={}", state_dir.display());
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut reaped = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var == marker.as_bytes())
            && let Ok(raw) = i32::try_from(pid)
            && kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok()
        {
            reaped.push(pid);
        }
    }
    reaped
}

/// How many logs of instances no longer running the state directory keeps (the newest).
pub const KEPT_LOGS: usize = 100;

/// Removes the oldest `*.log` files in `dir` beyond the newest `keep`, never one that `live`
/// says belongs to a running instance. Returns how many it removed.
pub fn prune_logs(dir: &Path, keep: usize, live: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut logs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let stem = path.file_name()?.to_str()?.strip_suffix(".log")?.to_owned();
            let modified = e.metadata().ok()?.modified().ok()?;
            (!live(&stem)).then_some((modified, path))
        })
        .collect();
    if logs.len() <= keep {
        return 0;
    }
    logs.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    logs.drain(keep..).filter(|(_, p)| std::fs::remove_file(p).is_ok()).count()
}

/// Makes the command's process get SIGKILL when the thread that started it ends (the fleet's
/// runtime thread, so: when the fleet dies, even by SIGKILL); refuses to start it if the fleet is
/// already gone.
#[expect(unsafe_code, reason = "pre_exec runs code between fork and exec")]
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec; it only makes two system calls
    // (prctl, getppid), which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the fleet exited while this instance started"));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("ikukantai-lifetime-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_words_until_it_lets_go() {
        let dir = Scratch::new("lock");
        let first = StateLock::acquire(dir.path(), "API http://127.0.0.1:7700").unwrap();
        let err = StateLock::acquire(dir.path(), "API http://127.0.0.1:7701").unwrap_err().to_string();
        let expected = format!("pid {}, API http://127.0.0.1:7700", std::process::id());
        assert!(err.contains(&expected) && err.contains("in use by another fleet"), "{err}");
        drop(first);
        let again = StateLock::acquire(dir.path(), "API http://127.0.0.1:7701");
        assert!(again.is_ok(), "released with its holder");
    }

    #[test]
    fn logs_beyond_the_newest_are_pruned_but_never_a_live_instance_s() {
        let dir = Scratch::new("logs");
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let f = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64)).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "kept").unwrap();
        // "a" is the oldest but still running; of the others the two newest stay.
        assert_eq!(prune_logs(dir.path(), 2, |n| n == "a"), 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["a.log", "c.log", "d.log", "notes.txt"]);
    }

    #[test]
    fn only_processes_marked_with_this_state_dir_are_reaped() {
        let (dir, other) = (Scratch::new("mine"), Scratch::new("theirs"));
        let spawn = |state: &Path| {
            std::process::Command::new("sleep").arg("30").env(FLEET_ENV, state).spawn().unwrap()
        };
        let (mut mine, mut theirs) = (spawn(dir.path()), spawn(other.path()));
        // Until a child has exec'd, /proc may show it with this process's environment (bounded:
        // the assertion below says what went wrong).
        for child in [&mine, &theirs] {
            let environ = format!("/proc/{}/environ", child.id());
            let marked = || {
                std::fs::read(&environ)
                    .is_ok_and(|e| e.windows(FLEET_ENV.len()).any(|w| w == FLEET_ENV.as_bytes()))
            };
            for _ in 0..5_000 {
                if marked() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let reaped = reap_orphans(dir.path());
        assert_eq!(reaped, vec![mine.id()]);
        assert!(!mine.wait().unwrap().success(), "killed");
        assert!(theirs.try_wait().unwrap().is_none(), "another fleet's process is left alone");
        let _ = theirs.kill();
        let _ = theirs.wait();
    }
}
